"""Where llama.cpp itself is installed (llama-cpp-python, built from its sdist), the exported GGUF
file runs in it: the chat template tokenises the same and the greedy answer is tunesmith's."""

from __future__ import annotations

import pytest

from tunesmith import api
from tunesmith.data.templates import encode_prompt, end_of_turn_ids, resolve_chat_template
from tunesmith.errors import UserError
from tunesmith.export import converter
from tunesmith.export import gguf as gguf_export

from ..conftest import ASSETS
from ..unit.test_gguf_modelfile import CONVERSATION

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp)")


@pytest.mark.slow
def test_llama_cpp_runs_the_export_like_tunesmith(tmp_path):
    try:
        converter.find_converter()
    except UserError:
        pytest.skip("llama.cpp's converter is not fetched (make gguf-tools)")
    model_dir = ASSETS / "base-model"  # a trained model: greedy answers are not near-ties
    result = gguf_export.export_gguf(model_dir, tmp_path / "gguf", quant="f16")
    model, tokenizer = api.load_for_inference(str(model_dir), device="cpu")
    template = resolve_chat_template(tokenizer)
    prompt = encode_prompt(tokenizer, template, CONVERSATION)
    expected = api.generate(str(model_dir), CONVERSATION, max_new_tokens=16, loaded=(model, tokenizer))

    llm = llama_cpp.Llama(model_path=str(result.gguf_file), n_ctx=512, verbose=False, seed=0)
    rendered = template.render(tokenizer, CONVERSATION, add_generation_prompt=True)
    assert list(llm.tokenize(rendered.encode(), add_bos=False, special=True)) == prompt
    stops = set(end_of_turn_ids(tokenizer, template))
    output: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if token in stops or len(output) >= 16:
            break
        output.append(token)
    assert tokenizer.decode(output, skip_special_tokens=True).strip() == expected

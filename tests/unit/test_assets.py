"""The embedded base model, its tokenizer and the sample data sets are usable as shipped."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ASSETS = Path(__file__).parents[2] / "src/tunesmith/assets"
BASE_MODEL = ASSETS / "base-model"
SAMPLES = ASSETS / "samples"
SPECIAL_TOKEN_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
NUM_PERPLEXITY_DOCUMENTS = 20


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BASE_MODEL)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(BASE_MODEL).eval()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def heldout_documents() -> list[str]:
    return [doc for doc in (ASSETS / "general_heldout.txt").read_text().split("\n\n") if doc.strip()]


def perplexity(model, tokenizer, documents: list[str]) -> float:
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for document in documents:
            ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(document)["input_ids"]]])
            total_loss += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    return math.exp(total_loss / total_tokens)


def test_files_are_small_enough():
    assert (BASE_MODEL / "model.safetensors").stat().st_size < 10_000_000
    total = sum(path.stat().st_size for path in BASE_MODEL.rglob("*") if path.is_file())
    assert total < 10_000_000
    assert "CC0-1.0" in (BASE_MODEL / "README.md").read_text()


def test_tokenizer_special_tokens(tokenizer):
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer(token)["input_ids"] == [token_id]
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.bos_token is None
    assert tokenizer.model_max_length == 512
    text = "Anna found a red kite near the river."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tokenizer_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What colour is snow?"},
        {"role": "assistant", "content": "Snow is white."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is snow?<|im_end|>\n"
        "<|im_start|>assistant\nSnow is white.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assistant_ids = [
        token for token, keep in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if keep
    ]
    assert tokenizer.decode(assistant_ids) == "Snow is white.<|im_end|>"


def test_model_config(model):
    config = model.config
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert config.max_position_embeddings == 512
    assert config.vocab_size >= len(AutoTokenizer.from_pretrained(BASE_MODEL))
    assert model.generation_config.eos_token_id == [2, 0]
    assert model.generation_config.pad_token_id == 0
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_trained_model_beats_random_init(model, tokenizer):
    documents = heldout_documents()[:NUM_PERPLEXITY_DOCUMENTS]
    assert len(documents) == NUM_PERPLEXITY_DOCUMENTS
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BASE_MODEL)).eval()
    # One thread: the matrices are tiny, and two threads on a busy CPU are ~100x slower here.
    previous_num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = perplexity(model, tokenizer, documents)
        random_init = perplexity(random_model, tokenizer, documents)
    finally:
        torch.set_num_threads(previous_num_threads)
    assert trained < random_init / 5, (trained, random_init)
    assert trained < 20, trained


def test_general_heldout_text_is_plain():
    text = (ASSETS / "general_heldout.txt").read_text()
    assert 100_000 <= len(text.encode()) <= 300_000
    assert "<|im_start|>" not in text and "<|endoftext|>" not in text
    assert len(heldout_documents()) >= 100


def test_instruct_samples():
    train = read_jsonl(SAMPLES / "instruct.jsonl")
    evaluation = read_jsonl(SAMPLES / "instruct_eval.jsonl")
    assert 400 <= len(train) <= 600 and 50 <= len(evaluation) <= 80
    for row in train + evaluation:
        roles = [message["role"] for message in row["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(message["content"], str) and message["content"] for message in row["messages"])
    multi_turn = sum(sum(m["role"] == "user" for m in row["messages"]) == 2 for row in train)
    assert 0.05 * len(train) <= multi_turn <= 0.2 * len(train)
    assert any(row["messages"][0]["role"] == "system" for row in train)
    train_serialised = {json.dumps(row, sort_keys=True) for row in train}
    assert not any(json.dumps(row, sort_keys=True) in train_serialised for row in evaluation)


def test_classify_samples():
    train = read_jsonl(SAMPLES / "classify.jsonl")
    evaluation = read_jsonl(SAMPLES / "classify_eval.jsonl")
    assert len(train) == 600 and len(evaluation) == 120
    for row in train + evaluation:
        assert set(row) == {"text", "label"} and row["text"]
        assert row["label"] in {"positive", "negative", "neutral"}
    counts = {
        label: sum(row["label"] == label for row in train) for label in ("positive", "negative", "neutral")
    }
    assert min(counts.values()) > 50 and len(set(counts.values())) == 3  # all present, not balanced
    assert not {row["text"] for row in train} & {row["text"] for row in evaluation}


def test_domain_samples():
    files = sorted((SAMPLES / "domain").glob("*"))
    assert 3 <= len(files) <= 5 and all(path.suffix in {".txt", ".md"} for path in files)
    total = sum(path.stat().st_size for path in files)
    assert 100_000 <= total <= 300_000
    assert "CC0" in (SAMPLES / "README.md").read_text()

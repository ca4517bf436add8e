"""Detectors for the data doctor: duplicates (exact and MinHash/LSH), sensitive content, divergence.

Plain functions on texts and numpy arrays; `scan.py` streams the data through them and
`findings.py` turns what they find into findings.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

WORD_PATTERN = re.compile(r"\w+", re.UNICODE)
SHINGLE_WORDS = 3  # word 3-grams: one changed word touches at most 3 shingles of a sentence


# Near-duplicates of a record longer than this are judged on its first SHINGLE_CHAR_LIMIT
# characters: the shingles of a 50 MB record would take GBs (a hash array per shingle).
SHINGLE_CHAR_LIMIT = 200_000


def normalize_text(text: str) -> str:
    """Case and whitespace do not make two samples different."""
    if len(text) <= SHINGLE_CHAR_LIMIT:
        return " ".join(text.lower().split())
    # The same result a slice at a time: a list of every word (or re.sub's list of pieces) of a
    # 50 MB record is ~10M small strings, over half a GB at once.
    out = io.StringIO()
    started = space = False
    for start in range(0, len(text), SHINGLE_CHAR_LIMIT):
        piece = text[start : start + SHINGLE_CHAR_LIMIT].lower()
        words = piece.split()
        if words:
            if started and (space or piece[0].isspace()):
                out.write(" ")
            out.write(" ".join(words))
            started = True
            space = piece[-1].isspace()
        else:
            space = True
    return out.getvalue()


def exact_hash(normalized: str) -> int:
    """A 64-bit fingerprint of the normalized text (collisions are ~1e-7 at 1M records)."""
    return int.from_bytes(
        hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


def shingles(normalized: str) -> list[bytes]:
    words = normalized[:SHINGLE_CHAR_LIMIT].split()
    if len(words) <= SHINGLE_WORDS:
        return [normalized.encode("utf-8")]
    return [
        " ".join(words[i : i + SHINGLE_WORDS]).encode("utf-8") for i in range(len(words) - SHINGLE_WORDS + 1)
    ]


def minhash_signatures(normalized_texts: Sequence[str], num_perm: int) -> np.ndarray:
    """MinHash signatures (datasketch), one uint32 row per text."""
    from datasketch import MinHash

    # crc32 instead of datasketch's default sha1: deterministic, and a third faster on short records.
    hashes = MinHash.bulk([shingles(t) for t in normalized_texts], num_perm=num_perm, hashfunc=zlib.crc32)
    if not hashes:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.stack([h.hashvalues for h in hashes]).astype(np.uint32, copy=False)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows per band that datasketch picks for this threshold.

    Weighted towards recall: every candidate is verified on the full signature afterwards, so a
    false candidate costs a comparison while a missed one is a missed duplicate.
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
    return lsh.b, lsh.r


def similar_pairs(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Pairs (i, j), i < j, whose estimated Jaccard similarity is at least `threshold`.

    LSH banding done with numpy sorts rather than datasketch's dict-of-sets index: the same
    bands, but 1M records fit in a few hundred MB instead of several GB. Each bucket links
    its members to its first (lowest) index, so an eval row (indices after train) in a bucket
    with a train row is paired with that train row directly.
    """
    count, num_perm = signatures.shape
    if count < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bands, rows = lsh_bands(threshold, num_perm)
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    found = []
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        with np.errstate(over="ignore"):  # wrap-around is the hash
            keys = (block * multipliers).sum(axis=1, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        if starts.all():
            continue
        first = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        members = ~starts
        found.append(np.stack([first[members], order[members]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 65536):  # verify on the full signature, in bounded memory
        chunk = pairs[start : start + 65536]
        agreement = (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(axis=1)
        keep[start : start + 65536] = agreement >= threshold
    return pairs[keep]


def later_members(pairs: np.ndarray) -> dict[int, int]:
    """Union the pairs into groups; map every member but the lowest index to that lowest index."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        while parent.get(node, node) != node:
            parent[node] = parent.get(parent[node], parent[node])
            node = parent[node]
        return node

    for first, second in pairs.tolist():
        a, b = root(first), root(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {node: root(node) for node in parent if root(node) != node}


# ---------------------------------------------------------------------------------------------
# Sensitive content

SENSITIVE_PATTERNS = {
    "private_key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "api_key": re.compile(
        r"\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
        r"|sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{30,}|xox[baprs]-[A-Za-z0-9\-]{10,}"
        r"|AIza[0-9A-Za-z_\-]{35}|[rs]k_live_[0-9A-Za-z]{16,}|glpat-[0-9A-Za-z_\-]{20})\b"
    ),
    "email": re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"),
    "card_number": re.compile(r"(?<![\d-])\d(?:[ \-]?\d){12,18}(?![\d-])"),
    "phone_number": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(?\d{1,4}\)?[ .\-]?){2,4}\d{2,4}"
        r"|\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4})(?!\w)"
    ),
}
# Cheap substring tests first: most records hold none of these, and five regex scans per record
# were the doctor's second-largest cost at 1M records.
API_KEY_MARKERS = ("AKIA", "gh", "sk-", "hf_", "xox", "AIza", "k_live_", "glpat-")
DIGIT = re.compile(r"\d")
SENSITIVE_KINDS = ("private_key", "api_key", "email", "card_number", "phone_number")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def find_sensitive(text: str) -> list[tuple[str, str]]:
    """(kind, masked value) for every e-mail, phone, Luhn-valid card number, API key and private key."""
    if not text:
        return []
    has_digits = DIGIT.search(text) is not None
    wanted = {
        "private_key": "PRIVATE KEY" in text,
        "api_key": any(marker in text for marker in API_KEY_MARKERS),
        "email": "@" in text,
        "card_number": has_digits,
        "phone_number": has_digits,
    }
    matches = [
        (m.start(), kind, m.group())
        for kind, pattern in SENSITIVE_PATTERNS.items()
        if wanted[kind]
        for m in pattern.finditer(text)
    ]
    found = []
    taken: list[tuple[int, int]] = []  # a card number is not also a phone number
    for start, kind, value in sorted(matches):
        if kind == "card_number":
            digits = re.sub(r"\D", "", value)
            if not (13 <= len(digits) <= 19 and luhn_valid(digits)):
                continue
        elif kind == "phone_number":
            digits = re.sub(r"\D", "", value)
            if not 9 <= len(digits) <= 15 or any(a <= start < b for a, b in taken):
                continue
        taken.append((start, start + len(value)))
        found.append((kind, mask(kind, value)))
    return found


def mask(kind: str, value: str) -> str:
    """Enough to find the value again in the file, never the value itself."""
    if kind == "email":
        local, _, domain = value.partition("@")
        host, _, top = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***.{top}"
    if kind in ("card_number", "phone_number"):
        digits = re.sub(r"\D", "", value)
        return f"***{digits[-2:]} ({len(digits)} digits)"
    if kind == "api_key":
        return f"{value[:4]}*** ({len(value)} characters)"
    return value.split("PRIVATE KEY")[0] + "PRIVATE KEY----- (key hidden)"


# ---------------------------------------------------------------------------------------------
# Distributions


def words(text: str) -> list[str]:
    return WORD_PATTERN.findall(text.lower())


def js_divergence(first: Counter | np.ndarray, second: Counter | np.ndarray) -> float:
    """Jensen-Shannon divergence in bits: 0 = same distribution, 1 = nothing in common."""
    if isinstance(first, Counter) and isinstance(second, Counter):
        keys = list(set(first) | set(second))
        first = np.array([first.get(k, 0) for k in keys], dtype=float)
        second = np.array([second.get(k, 0) for k in keys], dtype=float)
    p = np.asarray(first, dtype=float)
    q = np.asarray(second, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask_ = a > 0
        return float((a[mask_] * np.log2(a[mask_] / m[mask_])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def length_bins(max_seq_len: int) -> list[int]:
    """Bin edges in tokens: powers of two up to max_seq_len, then one bin for everything longer."""
    edges = [0]
    edge = 8
    while edge < max_seq_len:
        edges.append(edge)
        edge *= 2
    edges.append(max_seq_len)
    return edges


def histogram(lengths: np.ndarray, edges: list[int]) -> list[int]:
    """Counts per bin [edge_i, edge_i+1), with the last bin (> max_seq_len) open-ended."""
    if len(lengths) == 0:
        return [0] * len(edges)
    indices = np.searchsorted(np.asarray(edges[1:]), lengths, side="left")
    return np.bincount(indices, minlength=len(edges)).tolist()


def overrepresented_words(target: Counter, reference: Counter, limit: int = 8) -> list[str]:
    """Words frequent in `target` but rare in `reference` (what the reference does not cover)."""
    target_total = sum(target.values()) or 1
    reference_total = sum(reference.values()) or 1
    scored = []
    for word, count in target.items():
        if count < 2 or len(word) < 3 or word.isdigit():
            continue
        ratio = (count / target_total) / ((reference.get(word, 0) + 0.5) / reference_total)
        if ratio > 4:
            scored.append((count * math.log(ratio), word))
    return [word for _, word in sorted(scored, reverse=True)[:limit]]


TFIDF_TOKEN = re.compile(r"(?u)\b\w+\b")


def tfidf_matrices(fit_texts: Sequence[str], other_texts: Sequence[str]) -> tuple[Any, Any] | None:
    """TF-IDF rows of `fit_texts` and of `other_texts` over the vocabulary of `fit_texts` (scipy
    CSR, L2-normalised), as scikit-learn's TfidfVectorizer(sublinear_tf=True, token_pattern
    r"(?u)\b\w+\b") computes them: lowercase words, tf = 1 + ln(count), smooth
    idf = ln((1 + n) / (1 + df)) + 1. Written on scipy.sparse because importing scikit-learn adds
    ~100 MB to the training process that runs this check. None when `fit_texts` have no words."""
    from scipy import sparse

    vocabulary: dict[str, int] = {}

    def counts(texts: Sequence[str], grow: bool) -> Any:
        rows, columns, values = [], [], []
        for row, text in enumerate(texts):
            words = Counter(TFIDF_TOKEN.findall(text.lower()))
            for word, count in words.items():
                column = vocabulary.setdefault(word, len(vocabulary)) if grow else vocabulary.get(word)
                if column is not None:
                    rows.append(row)
                    columns.append(column)
                    values.append(count)
        shape = (len(texts), len(vocabulary))
        return sparse.csr_matrix((np.asarray(values, dtype=np.float64), (rows, columns)), shape=shape)

    fit = counts(fit_texts, grow=True)
    if not vocabulary:
        return None
    other = counts(other_texts, grow=False)
    document_frequency = np.bincount(fit.indices, minlength=len(vocabulary))
    idf = np.log((1 + len(fit_texts)) / (1 + document_frequency)) + 1.0
    result = []
    for matrix in (fit, other):
        matrix.data = 1.0 + np.log(matrix.data)
        matrix = matrix @ sparse.diags(idf)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        result.append(sparse.diags(1.0 / norms) @ matrix)
    return result[0].tocsr(), result[1].tocsr()


def uncovered_inputs(train_inputs: Sequence[str], targets: Sequence[str], min_similarity: float) -> list[int]:
    """Indices of `targets` whose best TF-IDF cosine similarity to any training input is below the bar."""
    if not train_inputs or not targets:
        return []
    matrices = tfidf_matrices(train_inputs, targets)
    if matrices is None:  # empty vocabulary
        return []
    train_matrix, target_matrix = matrices
    uncovered: list[int] = []
    for start in range(0, target_matrix.shape[0], 256):
        similarity = (target_matrix[start : start + 256] @ train_matrix.T).max(axis=1).toarray().ravel()
        uncovered.extend(int(start + i) for i in np.flatnonzero(similarity < min_similarity))
    return uncovered

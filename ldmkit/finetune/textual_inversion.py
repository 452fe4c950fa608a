"""Textual inversion (Gal et al. 2022): a new word for a subject or style, learned as the input
embedding of a new token while every weight of the model stays frozen.

The placeholder token ("<my-cat>") joins the tokenizer and a row per vector joins the text
encoder's input embedding matrix (BERT's word_embeddings for MiniLM, CLIP's token_embedding).
With n > 1 vectors the tokens are `token`, `token_1`, ..., `token_{n-1}`, and the prompt text
`token` stands for all n, as in diffusers and the A1111 web UI.

Training (TextualInversion): the optimizer gets a separate (n, dim) parameter, never the
embedding matrix, and a forward hook on the embedding module puts its rows in place of the new
tokens' lookups. No other row can move whatever the optimizer does (AdamW's weight decay would
shrink every row of a matrix it was given). merge() then writes the learned vectors into the
matrix and removes the hook, so the encoder needs nothing from this module afterwards.

Files, as other Stable Diffusion tools write them (vectors (n, dim) float32):
    A1111 web UI .pt          torch.save of {"string_to_token": {"*": 265}, "string_to_param":
                              {"*": vectors}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"};
                              read with torch.load(weights_only=True), never plain unpickling
    A1111 .safetensors        {"emb_params": vectors} (kohya's layout, which the web UI reads)
    diffusers                 learned_embeds.safetensors {token: vectors}; (dim,) vectors and the
                              older learned_embeds.bin (a torch.save of the same dict) are read too
SDXL files ({"clip_l": ..., "clip_g": ...}, one set per text encoder) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..storage.folder import atomic_write
from ..storage.weights_file import SAFETENSORS, detect_format, read_weights, safe_torch_load

LAYOUTS = ("a1111", "diffusers")
A1111_STAR_ID = 265  # the web UI writes CLIP's id of "*" under string_to_token; readers ignore it
SDXL_KEYS = ("clip_l", "clip_g")
WIDTHS_HINT = "SD 1.x: 768, SD 2.x: 1024, ldmkit's MiniLM models: 384"


def input_embedding(text_encoder) -> nn.Embedding:
    """The token embedding matrix of a TextEncoder or CLIPTextEncoder."""
    return text_encoder.model.get_input_embeddings()


def vector_tokens(token: str, count: int) -> list[str]:
    """The tokens of an n-vector embedding, named as diffusers names them."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def add_tokens(text_encoder, token: str, vectors: torch.Tensor) -> list[int]:
    """Add `token` to the tokenizer and a row per vector (n, dim) to the input embedding matrix;
    for n > 1, the n tokens of vector_tokens, and the prompt text `token` stands for all of them.
    Returns the new token ids."""
    vectors = _as_matrix(vectors, f"the vectors of {token!r}")
    embedding = input_embedding(text_encoder)
    if vectors.shape[1] != embedding.embedding_dim:
        raise ValueError(f"the vectors of {token!r} are {vectors.shape[1]} wide but this text encoder embeds "
                         f"tokens in {embedding.embedding_dim} dimensions ({WIDTHS_HINT})")
    tokens = vector_tokens(token, len(vectors))
    _refuse_known(text_encoder.tokenizer, token, tokens)
    text_encoder.tokenizer.add_tokens(tokens)
    ids = text_encoder.tokenizer.convert_tokens_to_ids(tokens)
    _grow(embedding, ids, vectors)
    text_encoder.model.config.vocab_size = embedding.num_embeddings  # a saved model is rebuilt at this size
    if len(tokens) > 1:
        text_encoder.token_expansions[token] = " ".join(tokens)
    return ids


def _refuse_known(tokenizer, token: str, tokens: list[str]) -> None:
    """A token the tokenizer already reads as one would lose its meaning (or its vectors)."""
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"the token {token!r} must be one word without spaces, e.g. \"<my-token>\"")
    vocabulary = tokenizer.get_vocab()
    for name in tokens:
        pieces = tokenizer.tokenize(name)
        if name in vocabulary or (len(pieces) == 1 and pieces[0] != tokenizer.unk_token):
            core = token.strip("<>") or "my-token"
            suggestion = f"<{core}-2>" if token.startswith("<") else f"<{core}>"
            raise ValueError(f"the token {name!r} is already in the tokenizer's vocabulary (read as {pieces}); "
                             f"choose a new one, e.g. {suggestion!r}: angle brackets keep it apart from real words")


def _grow(embedding: nn.Embedding, ids: list[int], vectors: torch.Tensor) -> None:
    """Write `vectors` at rows `ids`, growing the matrix to hold them. The module is kept, not
    replaced, so that hooks on it (TextualInversion's) stay. Ids below the old size can only
    come from a tokenizer shorter than its matrix: rows no token reached before."""
    old = embedding.weight
    rows = max(embedding.num_embeddings, max(ids) + 1)
    with torch.no_grad():
        weight = torch.cat([old, old.new_zeros(rows - len(old), old.shape[1])])
        weight[ids] = vectors.to(weight)
    embedding.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
    embedding.num_embeddings = rows


def _as_matrix(vectors, what: str) -> torch.Tensor:
    """(dim,) or (n, dim) -> (n, dim), detached."""
    if not isinstance(vectors, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(vectors).__name__}")
    vectors = vectors.detach()
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or len(vectors) == 0 or not vectors.is_floating_point():
        raise ValueError(f"{what} must be float vectors of shape (dim,) or (n, dim), got {vectors.dtype} "
                         f"{tuple(vectors.shape)}")
    return vectors


def _single_token_id(tokenizer, word: str) -> int:
    """The id of `word`, which must be one known token: its embedding starts the new vectors."""
    pieces = tokenizer.tokenize(word)
    if len(pieces) == 1 and pieces[0] != tokenizer.unk_token:
        return tokenizer.convert_tokens_to_ids(pieces[0])
    found = "unknown to this tokenizer" if pieces == [tokenizer.unk_token] else f"{len(pieces)} tokens {pieces}"
    raise ValueError(f"the initializer {word!r} is {found}; give one word that is a single token and close to "
                     "the new concept, e.g. \"cat\"")


class TextualInversion:
    """A new token's vectors, trainable while everything else stays frozen.

        ti = TextualInversion(pipe.text_encoder, "<my-cat>", initializer="cat", num_vectors=2)
        optimizer = torch.optim.AdamW(ti.parameters(), lr=5e-3)
        context, mask = ti.conditioning(["a photo of <my-cat>"])  # differentiable in ti.vectors
        ...
        ti.merge()  # the learned vectors into the embedding matrix; the hook goes
        ti.save("my-cat.pt")

    Create it once the text encoder is on its device: the vectors are made where its embedding
    matrix is.
    """

    def __init__(self, text_encoder, token: str, initializer: str, num_vectors: int = 1):
        if num_vectors < 1:
            raise ValueError(f"num_vectors must be 1 or more, got {num_vectors}")
        embedding = input_embedding(text_encoder)
        start = embedding.weight[_single_token_id(text_encoder.tokenizer, initializer)].detach()
        self.text_encoder, self.token = text_encoder, token
        self.token_ids = add_tokens(text_encoder, token, start.expand(num_vectors, -1))
        # float32 whatever the encoder's dtype: small updates to fp16 vectors would round away
        self.vectors = nn.Parameter(start.float().repeat(num_vectors, 1))
        self._ids = torch.tensor(self.token_ids, device=start.device)
        self._hook = embedding.register_forward_hook(self._splice)

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the (n, dim) vectors, nothing else."""
        return [self.vectors]

    def _splice(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """The embedding lookup, with the new tokens' rows taken from self.vectors."""
        matches = inputs[0].unsqueeze(-1) == self._ids.to(inputs[0].device)  # (..., n)
        learned = self.vectors.to(output.device, output.dtype)[matches.int().argmax(-1)]
        return torch.where(matches.any(-1, keepdim=True), learned, output)

    def conditioning(self, captions: Sequence[str]):
        """What the text encoder returns for `captions`, differentiable in the vectors."""
        if self._hook is None:
            raise RuntimeError(f"{self.token!r} was merged into the text encoder: training is over "
                               "(encode with the text encoder itself, or start a new TextualInversion)")
        return self.text_encoder.encode(list(captions))

    def merge(self) -> None:
        """Write the learned vectors into the embedding matrix and remove the hook: the text
        encoder then reads the token by itself (and a saved model keeps it)."""
        if self._hook is None:
            return
        weight = input_embedding(self.text_encoder).weight
        with torch.no_grad():
            weight[self.token_ids] = self.vectors.to(weight)
        self._hook.remove()
        self._hook = None

    def save(self, path: str | Path, layout: str = "a1111", step: int | None = None,
             checkpoint_name: str | None = None) -> Path:
        return save_embedding(path, self.token, self.vectors, layout, step=step, checkpoint_name=checkpoint_name)


# ---- files ---------------------------------------------------------------------------------------
def save_embedding(path: str | Path, token: str, vectors: torch.Tensor, layout: str = "a1111",
                   step: int | None = None, checkpoint_name: str | None = None) -> Path:
    """Write (n, dim) vectors in the `layout` of another tool (see the module docstring):
    "a1111" as .pt or .safetensors (by the name's suffix), "diffusers" as .safetensors.
    step and checkpoint_name go into the A1111 .pt only. Written atomically."""
    path = Path(path)
    if not isinstance(token, str) or not token:
        raise ValueError(f"the token must be a non-empty string, got {token!r}")
    # a copy: torch.save of a view (a row slice of a matrix) would write the whole matrix
    vectors = _as_matrix(vectors, f"the vectors of {token!r}").to("cpu", torch.float32).clone().contiguous()
    if layout == "a1111" and path.suffix == ".pt":
        data = {"string_to_token": {"*": A1111_STAR_ID}, "string_to_param": {"*": vectors}, "name": token,
                "step": step, "sd_checkpoint": None, "sd_checkpoint_name": checkpoint_name}
        return atomic_write(path, lambda tmp: torch.save(data, tmp))
    if layout == "a1111" and path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file({"emb_params": vectors}, tmp, metadata={"name": token}))
    if layout == "diffusers" and path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file({token: vectors}, tmp))
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    suffixes = ".pt or .safetensors" if layout == "a1111" else ".safetensors (e.g. learned_embeds.safetensors)"
    raise ValueError(f"{path}: the {layout} layout is written as {suffixes}, not {path.suffix or 'no suffix'}")


def load_embedding(path: str | Path) -> tuple[str | None, torch.Tensor]:
    """(the token the file names, or None; vectors (n, dim) float32) from any layout above."""
    _, token, vectors = _read_embedding(Path(path))
    return token, vectors


def apply_embedding(pipe, path: str | Path, token: str | None = None) -> str:
    """Teach `pipe`'s text encoder the embedding in `path`; returns the token to write in prompts.
    The token defaults to the file's stem for the A1111 layouts (the web UI names embeddings so)
    and to the token inside the file for diffusers'. Prompts are encoded afresh at every call
    (Pipeline.encode_prompts caches nothing), so the next generation sees the token."""
    if not (pipe.uses_clip or pipe.uses_minilm):
        raise ValueError(f"{pipe.name} is not conditioned on text: it has no text encoder to teach a token")
    path = Path(path)
    layout, file_token, vectors = _read_embedding(path)
    token = token or (file_token if layout == "diffusers" else path.stem)
    width = input_embedding(pipe.text_encoder).embedding_dim
    if vectors.shape[1] != width:
        raise ValueError(f"{path} holds {vectors.shape[1]}-wide vectors but this model's text encoder embeds tokens "
                         f"in {width} dimensions: the embedding was made for another text encoder ({WIDTHS_HINT})")
    add_tokens(pipe.text_encoder, token, vectors)
    return token


def _read_embedding(path: Path) -> tuple[str, str | None, torch.Tensor]:
    """(layout, token or None, vectors (n, dim) float32)."""
    if not path.is_file():
        what = "is a folder, not an embedding file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {what}: give an embedding file (.pt, .safetensors or .bin)")
    if detect_format(path) == SAFETENSORS:
        tensors, metadata = read_weights(path)
        return _from_tensors(tensors, metadata.get("name"), path)
    data = safe_torch_load(path, "cpu")  # weights_only=True; a refusal is reported, nothing is run
    if isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        found = list(params.values()) if isinstance(params, dict) else []
        if len(found) != 1 or not isinstance(found[0], torch.Tensor):
            raise ValueError(f"{path} is an A1111 embedding whose string_to_param does not hold one tensor")
        name = data.get("name") if isinstance(data.get("name"), str) else None
        return "a1111", name, _as_matrix(found[0], f"the vectors in {path}").float()
    if isinstance(data, dict):  # diffusers' older learned_embeds.bin: {token: vectors}
        return _from_tensors({k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, None, path)
    raise ValueError(f"{path} holds a {type(data).__name__}, not a textual inversion embedding")


def _from_tensors(tensors: dict[str, torch.Tensor], name: str | None, path: Path):
    """(layout, token or None, vectors) from a file's tensors: A1111's emb_params or diffusers' {token: vectors}."""
    if "emb_params" in tensors:
        return "a1111", name, _as_matrix(tensors["emb_params"], f"the vectors in {path}").float()
    if any(key in tensors for key in SDXL_KEYS):
        raise ValueError(f"{path} is an SDXL embedding (vectors for SDXL's two text encoders, {SDXL_KEYS}): not "
                         "supported; ldmkit runs Stable Diffusion 1.x / 2.x and its own models, one text encoder each")
    if len(tensors) == 1:
        (token, vectors), = tensors.items()
        return "diffusers", token, _as_matrix(vectors, f"the vectors in {path}").float()
    raise ValueError(f"{path} is not a textual inversion embedding: expected 'string_to_param' (A1111 .pt), "
                     f"'emb_params' (A1111 .safetensors) or one token's vectors (diffusers), "
                     f"found {sorted(tensors)[:8]}")

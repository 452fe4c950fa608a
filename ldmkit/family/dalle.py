"""A trained miniature DALL-E (ldmkit.nets.dalle), loaded for sampling: caption tokens in, VQ
codes drawn one by one, images decoded by the VQ first stage; best-of-N by CLIP optional.

A DALL-E folder (`ldmkit train-dalle`'s run_dir/model, or one of its checkpoints) holds
config.json {"kind": "dalle", "dalle": DalleConfig, "vocabulary": {"tokens", "words"},
"autoencoder": the VQ first stage's folder, "dataset", "training", ...} and model.safetensors
("dalle." tensors). The first stage is read from its own folder, as the path was given in training
(a relative "models/autoencoders/..." is found inside the repository).

The text vocabulary is [PAD] (id 0) and the WordPiece pieces (MiniLM's uncased tokenizer) of the
training captions, sorted: the captions hold a few dozen of the tokenizer's 30,522, and text
logits over those few keep the text head small. A prompt word that no training caption contained
is refused by name (even one whose pieces are known: "sneak" of "sneak ##er"): the model has never seen
it and would read the prompt as something else without saying so.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..config import from_dict, to_dict
from ..model.folder import load_autoencoder, resolve_repo_path
from ..nets.dalle import PAD_ID, DalleConfig, DalleTransformer, check_sampling, sample_codes
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from ..utils.images import to_pil
from .base import FamilyGenerator, check_common

OUTPUTS = ("pil", "tensor", "codes")
PAD_TOKEN = "[PAD]"


@functools.lru_cache(maxsize=1)
def wordpiece():
    """MiniLM's WordPiece tokenizer (packaged; nothing is downloaded), loaded once."""
    from ..model.clip import minilm_tokenizer

    return minilm_tokenizer()


def caption_words(text: str) -> list[str]:
    """The words WordPiece sees: lower-cased, accents stripped, split at spaces and punctuation
    ("A T-shirt/top" -> a, t, -, shirt, /, top); each is then cut into pieces."""
    backend = wordpiece().backend_tokenizer
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


class CaptionVocabulary:
    """What a DALL-E model can read: its text tokens ([PAD] = id 0, then WordPiece pieces) and the
    words of its training captions (a prompt may use these only)."""

    def __init__(self, tokens: Sequence[str], words: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[PAD_ID] != PAD_TOKEN or len(set(tokens)) != len(tokens):
            raise ValueError(f"a vocabulary is {PAD_TOKEN} first, then distinct tokens; got {tokens[:5]}...")
        self.tokens, self.words = tokens, sorted(set(words))
        self.ids = {token: i for i, token in enumerate(tokens)}

    @classmethod
    def from_captions(cls, captions: Sequence[str]) -> CaptionVocabulary:
        distinct = set(captions)
        pieces = {piece for caption in distinct for piece in wordpiece().tokenize(caption)}
        return cls([PAD_TOKEN, *sorted(pieces)], {word for caption in distinct for word in caption_words(caption)})

    @classmethod
    def from_dict(cls, data: dict) -> CaptionVocabulary:
        return cls(data["tokens"], data["words"])

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "words": self.words}

    def __len__(self) -> int:
        return len(self.tokens)

    def unknown_words(self, prompt: str) -> list[str]:
        """The prompt's words that no training caption contained ([UNK] words among them)."""
        known = set(self.words)
        return [word for word in caption_words(prompt) if word not in known]

    def encode(self, captions: Sequence[str], length: int) -> torch.Tensor:
        """Captions -> ids (B, length) long: their pieces, truncated or padded with [PAD].
        Unknown words: a ValueError naming them."""
        distinct = list(dict.fromkeys(captions))  # each distinct caption tokenised once
        unknown = list(dict.fromkeys(w for c in distinct for w in self.unknown_words(c)))
        if unknown:
            raise ValueError(f"words this model never saw in its training captions: {unknown}. Its vocabulary has "
                             f"{len(self)} tokens, the pieces of these {len(self.words)} words: "
                             f"{' '.join(self.words)}")
        rows = {}
        for caption in distinct:
            ids = [self.ids[p] for p in wordpiece().tokenize(caption)][:length]
            rows[caption] = ids + [PAD_ID] * (length - len(ids))
        return torch.tensor([rows[c] for c in captions], dtype=torch.long)

    def length_of(self, caption: str) -> int:
        return len(wordpiece().tokenize(caption))


@torch.no_grad()
def image_codes(autoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] -> the VQ autoencoder's codes k(n) (N, h, w) long, on the CPU."""
    if autoencoder.config.kind != "vq":
        raise ValueError(f"DALL-E reads the codes of a VQ autoencoder; this one is {autoencoder.config.kind!r}")
    like = next(autoencoder.parameters())
    return torch.cat([autoencoder.quantizer.nearest(autoencoder.encode(chunk.to(like.device, like.dtype)).h).cpu()
                      for chunk in images.split(batch_size)])


@torch.no_grad()
def decode_codes(autoencoder, codes: torch.Tensor) -> torch.Tensor:
    """Codes (B, h, w) -> images (B, C, H, W) in [-1, 1], float32: the decoder of their vectors e_k."""
    dtype = next(autoencoder.parameters()).dtype
    z_q = autoencoder.quantizer.lookup(codes.to(autoencoder.quantizer.codebook.weight.device)).to(dtype)
    return autoencoder.decode(z_q, quantize=False).float().clamp(-1, 1)


def save_dalle(directory: str | Path, model: DalleTransformer, vocabulary: CaptionVocabulary, autoencoder: str,
               extra: dict | None = None, train_state: dict | None = None) -> Path:
    """A DALL-E folder (see the module docstring); with train_state, a checkpoint that loads too."""
    meta = {**(extra or {}), "kind": "dalle", "dalle": to_dict(model.config), "vocabulary": vocabulary.to_dict(),
            "autoencoder": str(autoencoder)}
    return save_checkpoint(directory, {"dalle": model.state_dict()}, meta, train_state)


class DalleGenerator(FamilyGenerator):
    """The transformer in eval mode and its VQ first stage. An image depends on its own
    generator alone (ldmkit.nets.dalle.draw_codes), never on the others of its batch."""

    kind = "dalle"

    def __init__(self, model: DalleTransformer, autoencoder, vocabulary: CaptionVocabulary, name: str = "dalle",
                 meta: dict | None = None):
        super().__init__(name, meta)
        self.model = model.eval().requires_grad_(False)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.vocabulary = vocabulary
        c, a = model.config, autoencoder.config
        if a.kind != "vq" or a.codebook_size != c.codebook_size or len(vocabulary) != c.text_vocab_size:
            raise ValueError(f"the parts disagree: a transformer of {c.codebook_size} codes and {c.text_vocab_size} "
                             f"text tokens, a {a.kind} autoencoder of {a.codebook_size} codes, a vocabulary of "
                             f"{len(vocabulary)} tokens")

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> DalleGenerator:
        """A DALL-E folder, or one of a DALL-E run's checkpoints."""
        path = resolve_repo_path(path)
        states, meta, _ = load_checkpoint(path)
        if meta.get("kind") != "dalle" or "dalle" not in states:
            raise CheckpointError(f"{path} does not hold a DALL-E model (kind {meta.get('kind')!r})")
        model = DalleTransformer(from_dict(DalleConfig, meta["dalle"]))
        model.load_state_dict(states["dalle"])
        first_stage = resolve_repo_path(meta["autoencoder"])
        if not first_stage.is_dir():
            raise FileNotFoundError(f"{path} decodes with the VQ autoencoder {meta['autoencoder']}, which is not "
                                    "there: train it (ldmkit train-autoencoder) or copy it to that path")
        autoencoder = load_autoencoder(first_stage)
        vocabulary = CaptionVocabulary.from_dict(meta["vocabulary"])
        return cls(model, autoencoder, vocabulary, name=path.name, meta=meta).to(device, dtype)

    @property
    def config(self) -> DalleConfig:
        return self.model.config

    def modules(self) -> list[torch.nn.Module]:
        return [self.model, self.autoencoder]

    def config_entries(self) -> dict:
        return {"dalle": to_dict(self.config), "vocabulary": self.vocabulary.to_dict()}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, C, H, W) in [-1, 1] (what best-of-N reranking scores)."""
        return decode_codes(self.autoencoder, codes)

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str], num_images: int = 1, seed: int = 0, output: str = "pil",
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, rerank: int = 1,
                 clip=None, batch_size: int = 256) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, prompt-major. Image k of prompt p draws its codes from
        a generator seeded seed + p * num_images + k, so it is the same alone or in any batch.
        temperature, top_k (the k most likely codes), top_p (the nucleus) shape each draw.
        rerank=N: N candidates per image (candidate 0 is the image rerank=1 gives, candidate r
        seeded from that seed and r), the one `clip` (a CLIP, or its name or folder) scores highest
        with the prompt kept: DALL-E's reranking. output: "pil", "tensor" ((N, C, H, W) in [-1, 1])
        or "codes" ((N, h, w) long)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or a non-empty list of them")
        check_common(num_images, output, OUTPUTS)
        if isinstance(rerank, bool) or int(rerank) != rerank or rerank < 1:
            raise ValueError(f"rerank must be a whole number >= 1, got {rerank!r}")
        check_sampling(self.config.codebook_size, temperature, top_k, top_p)
        if rerank > 1 and clip is None:
            raise ValueError(f"rerank={rerank} scores candidates with a CLIP: pass clip= (a CLIP, or its name or "
                             "folder, e.g. clip='clip-small')")
        text = self.vocabulary.encode(prompts, self.config.text_length)           # (P, L); unknown words refused
        for p in prompts:
            if self.vocabulary.length_of(p) > self.config.text_length:
                warnings.warn(f"prompt {p!r} is longer than the model's {self.config.text_length} text tokens: "
                              "the rest is cut off", stacklevel=2)
        per_image = [p for p in prompts for _ in range(int(num_images))]
        image_seeds = [seed + i for i in range(len(per_image))]                   # seed + p * num_images + k
        rows = [(i, r) for i in range(len(per_image)) for r in range(int(rerank))]  # image-major candidates
        generators = [torch.Generator().manual_seed(image_seeds[i] + r * 1_000_003) for i, r in rows]
        ids = text.repeat_interleave(int(num_images) * int(rerank), dim=0).to(self.device)
        codes = torch.cat([sample_codes(self.model, ids[s:s + batch_size], generators[s:s + batch_size],
                                        temperature, top_k, top_p) for s in range(0, len(rows), batch_size)])
        if rerank > 1:
            codes = self._best_of(codes, [per_image[i] for i, _ in rows], int(rerank), clip)
        if output == "codes":
            return codes.cpu()
        images = torch.cat([self.decode(codes[s:s + batch_size]) for s in range(0, len(codes), batch_size)])
        return images if output == "tensor" else [to_pil(x) for x in images]

    def _best_of(self, codes: torch.Tensor, prompts: list[str], n: int, clip) -> torch.Tensor:
        """Of each n consecutive candidates, the codes CLIP scores highest with their prompt."""
        from ..model.clip import CLIP, best_of

        if not isinstance(clip, CLIP):
            clip = CLIP.from_pretrained(clip, self.device)
        best, _ = best_of(self.decode, clip, codes, prompts, n)
        return best

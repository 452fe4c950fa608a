"""Hypernetworks as the AUTOMATIC1111 SD web UI made them popular: small MLPs on the context of
cross-attention.

For each context width D (768 SD1, 1024 SD2, 384 ldmkit's MiniLM models) a pair of MLPs, one for
the keys and one for the values. In every cross-attention layer

    K = W_K (c + s * mlp_k(c)),    V = W_V (c + s * mlp_v(c)),    Q unchanged,

with c the context tokens and s the strength (A1111's "multiplier"; s = 0 is the plain model).
The MLPs are attached with forward pre-hooks on to_k and to_v, so the UNet stays untouched.

Each MLP is an nn.Sequential named `linear`, built exactly as the web UI builds it, so its state
dict keys are the file's keys. For i = 0 .. n-2 over layer_structure m_0 .. m_{n-1} (m_0 = m_{n-1}
= 1) it appends, in this order:

    Linear(int(D m_i), int(D m_{i+1}))
    the activation          unless it is "linear" (or None), or i = n-2 and not activate_output
    LayerNorm(int(D m_{i+1}))   if is_layer_norm
    Dropout(p_{i+1})        if dropout_structure[i+1] > 0

`linear.K.weight` is the K-th module of that sequence: activations and dropouts take an index too,
so they leave gaps. E.g. [1, 2, 1], relu, layer norm, dropout [0, 0.3, 0]: 0 Linear, 1 ReLU,
2 LayerNorm, 3 Dropout, 4 Linear, 5 LayerNorm (weights at 0, 2, 4, 5).

Files:
    .pt            the web UI's layout, read with torch.load(weights_only=True) only: a dict
                   {D (int): (state_dict_k, state_dict_v), "layer_structure": [...],
                   "activation_func": str, "is_layer_norm": bool, "weight_initialization": str,
                   "use_dropout": bool, "dropout_structure": [...], "last_layer_dropout": bool,
                   "activate_output": bool, "name": str, "step": int, "sd_checkpoint": str,
                   "sd_checkpoint_name": str}; old files' linear1 / linear2 keys are renamed
                   linear.0 / linear.1
    .safetensors   ldmkit's layout (no standard exists): tensors "{D}.k.linear.K.weight",
                   "{D}.v.linear.K.bias", ...; metadata "format": "ldmkit.hypernetwork" and
                   "hypernetwork": the .pt file's option keys as one JSON object

Differences from the web UI, on purpose: its strength is 1 whenever the MLP is in training mode,
here the strength set is always used (train at the default 1 to match); and it also sends the
self-attention input (attn1, context = x) through the MLPs whose width equals the feature width
(320 / 640 / 1280 in SD1 files made with the UI's default "modules"). Here attn1 is left alone
unless attach(..., self_attention=True), which reproduces the UI's outputs for such files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..nets.attention import Attention, TransformerBlock
from ..storage.folder import CheckpointError, atomic_write
from ..storage.weights_file import SAFETENSORS, detect_format, read_weights, safe_torch_load

# The web UI's activation names: its own seven, then every torch.nn activation by lower-cased
# class name. "swish" is Hardswish there, not SiLU: kept, or its files would change meaning.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name.lower(): cls for name, cls in vars(nn.modules.activation).items()
    if isinstance(cls, type) and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
}
ACTIVATIONS.update(relu=nn.ReLU, leakyrelu=nn.LeakyReLU, elu=nn.ELU, swish=nn.Hardswish,
                   tanh=nn.Tanh, sigmoid=nn.Sigmoid)
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
FORMAT = "ldmkit.hypernetwork"  # safetensors metadata "format"


@dataclass(frozen=True)
class HypernetworkOptions:
    """How each MLP is built; the web UI's file keys in brackets."""

    layer_structure: tuple[float, ...] = (1, 2, 1)  # [layer_structure] widths / D, first, last 1
    activation: str = "linear"                      # [activation_func]; "linear" = none
    layer_norm: bool = False                        # [is_layer_norm] after every Linear
    dropout_structure: tuple[float, ...] = ()       # [dropout_structure] p after each width; () = 0
    activate_output: bool = False                   # [activate_output] activation after the last
    weight_init: str = "Normal"                     # [weight_initialization]

    def __post_init__(self):
        structure = tuple(self.layer_structure)
        if (len(structure) < 2 or structure[0] != 1 or structure[-1] != 1
                or not all(isinstance(m, (int, float)) and m > 0 for m in structure)):
            raise ValueError(f"layer_structure {list(self.layer_structure)} is not valid: give "
                             f"positive multiples of the context width that start and end with 1 "
                             f"(the MLP's output is added to its input), e.g. [1, 2, 1]")
        dropout = tuple(self.dropout_structure) or (0.0,) * len(structure)
        if len(dropout) != len(structure) or not all(
                isinstance(p, (int, float)) and 0 <= p < 1 for p in dropout):
            raise ValueError(f"dropout_structure {list(self.dropout_structure)} is not valid: give "
                             f"one probability in [0, 1) per layer_structure entry "
                             f"({len(structure)}), e.g. {[0] + [0.3] * (len(structure) - 2) + [0]}")
        if self.activation not in ACTIVATIONS and self.activation != "linear":
            raise ValueError(f"unknown activation {self.activation!r}: use linear, relu, "
                             f"leakyrelu, elu, swish, tanh, sigmoid or a torch.nn activation's "
                             f"lower-cased class name (gelu, silu, mish, ...)")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"unknown weight_init {self.weight_init!r}; use one of {WEIGHT_INITS}")
        object.__setattr__(self, "layer_structure", structure)
        object.__setattr__(self, "dropout_structure", dropout)


class HypernetworkModule(nn.Module):
    """One MLP for D-wide context tokens: c -> c + strength * linear(c)."""

    def __init__(self, width: int, options: HypernetworkOptions = HypernetworkOptions()):
        super().__init__()
        widths = [int(width * m) for m in options.layer_structure]  # the UI truncates too
        if min(widths) < 1:
            raise ValueError(f"layer_structure {list(options.layer_structure)} gives a layer of "
                             f"width 0 for context width {width}: use larger multiples")
        last = len(widths) - 2
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if options.activation != "linear" and (i < last or options.activate_output):
                try:
                    layers.append(ACTIVATIONS[options.activation]())
                except TypeError:
                    raise ValueError(f"activation {options.activation!r} needs arguments; pick "
                                     f"one that has none, e.g. relu or gelu") from None
            if options.layer_norm:
                layers.append(nn.LayerNorm(d_out))
            if options.dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(options.dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)
        self._initialise(options)

    @torch.no_grad()
    def _initialise(self, options: HypernetworkOptions):
        """The web UI's: "Normal" N(0, 0.01) weights and zero biases, so a new hypernetwork barely
        changes the model; LayerNorms always so (gain ~0.01 keeps the residual small); Xavier /
        Kaiming on the Linears otherwise (not near the identity any more)."""
        relu = "leaky_relu" if options.activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            nn.init.zeros_(layer.bias)
            if options.weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(layer.weight, std=0.01)
            elif options.weight_init == "XavierUniform":
                nn.init.xavier_uniform_(layer.weight)
            elif options.weight_init == "XavierNormal":
                nn.init.xavier_normal_(layer.weight)
            elif options.weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(layer.weight, nonlinearity=relu)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity=relu)

    def forward(self, context: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return context + self.linear(context) * strength                      # (B, L, D)


class _ContextHook:
    """Forward pre-hook on a to_k / to_v Linear: its input c becomes c + strength * mlp(c)."""

    def __init__(self, hypernetwork: Hypernetwork, mlp: HypernetworkModule):
        self.hypernetwork, self.mlp = hypernetwork, mlp

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        strength = self.hypernetwork.strength
        if strength == 0:
            return None  # the plain model, bit for bit, and no MLP to run
        (context,) = args
        dtype = self.mlp.linear[0].weight.dtype  # run in the MLP's dtype (fp32 under an fp16 UNet)
        return (self.mlp(context.to(dtype), strength).to(context.dtype),)


class Hypernetwork(nn.Module):
    """{context width D: (mlp_k, mlp_v)}, the options they were built with, and the web UI's
    bookkeeping (name, step, sd_checkpoint, sd_checkpoint_name)."""

    def __init__(self, widths: Sequence[int], options: HypernetworkOptions = HypernetworkOptions(),
                 name: str = "hypernetwork"):
        super().__init__()
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"widths {list(widths)} is not valid: give the context widths to "
                             f"build MLPs for, e.g. [768] SD1, [1024] SD2, [384] ldmkit's MiniLM")
        self.options, self.name = options, name
        self.step, self.sd_checkpoint, self.sd_checkpoint_name = 0, None, None
        self.mlps = nn.ModuleDict({
            str(w): nn.ModuleDict({"k": HypernetworkModule(w, options),
                                   "v": HypernetworkModule(w, options)})
            for w in sorted(set(widths))})
        self.strength = 1.0
        self._handles: list = []

    @classmethod
    def create(cls, widths: Sequence[int], layer_structure: Sequence[float] = (1, 2, 1),
               activation: str = "linear", layer_norm: bool = False,
               dropout: float | Sequence[float] = 0.0, activate_output: bool = False,
               weight_init: str = "Normal", name: str = "hypernetwork") -> Hypernetwork:
        """A new hypernetwork. dropout: p after every hidden layer, or a dropout_structure (one p
        per layer_structure entry, the web UI's form)."""
        if isinstance(dropout, (int, float)):
            dropout = [0.0] + [float(dropout)] * (len(layer_structure) - 2) + [0.0]
        options = HypernetworkOptions(tuple(layer_structure), activation, layer_norm,
                                      tuple(dropout), activate_output, weight_init)
        return cls(list(widths), options, name)

    @property
    def widths(self) -> list[int]:
        return sorted(int(w) for w in self.mlps)

    def pair(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule]:
        """(mlp_k, mlp_v) for D = width."""
        if str(width) not in self.mlps:
            raise ValueError(f"hypernetwork {self.name!r} has MLPs for context widths "
                             f"{self.widths}, not for {width}")
        mlps = self.mlps[str(width)]
        return mlps["k"], mlps["v"]

    # ---- attaching to a UNet ------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, unet: nn.Module, strength: float = 1.0, self_attention: bool = False,
               replace: bool = False) -> Hypernetwork:
        """Hook every cross-attention layer (attn2) of `unet`; moves the MLPs to its device.
        self_attention: also attn1 where an MLP of its width exists (the web UI's behaviour).
        replace: detach another hypernetwork found on `unet` instead of refusing."""
        if self.attached:
            raise ValueError(f"hypernetwork {self.name!r} is already attached; call detach() "
                             f"before attaching it again")
        blocks = [m for m in unet.modules() if isinstance(m, TransformerBlock) and m.has_cross]
        if not blocks:
            raise ValueError(f"{type(unet).__name__} has no cross-attention layers (attn2): give "
                             f"a UNet conditioned on a context, e.g. pipe.unet of a text model")
        needed = sorted({b.attn2.to_k.in_features for b in blocks})
        missing = [w for w in needed if str(w) not in self.mlps]
        if missing:
            raise ValueError(f"hypernetwork {self.name!r} has MLPs for context widths "
                             f"{self.widths}, but this UNet's cross-attention needs {missing} "
                             f"(768 SD1, 1024 SD2, 384 ldmkit's MiniLM models): use a "
                             f"hypernetwork made for this model")
        targets: list[Attention] = [b.attn2 for b in blocks]
        if self_attention:
            targets += [b.attn1 for b in unet.modules() if isinstance(b, TransformerBlock)
                        and str(b.attn1.to_k.in_features) in self.mlps]
        others = {hook.hypernetwork for attn in targets for layer in (attn.to_k, attn.to_v)
                  for hook in layer._forward_pre_hooks.values() if isinstance(hook, _ContextHook)}
        if others and not replace:
            names = ", ".join(repr(o.name) for o in others)
            raise ValueError(f"this UNet already has hypernetwork {names} attached: call its "
                             f"detach() first, or attach with replace=True")
        for other in others:
            other.detach()
        self.set_strength(strength)
        self.to(targets[0].to_k.weight.device)
        for attn in targets:
            mlp_k, mlp_v = self.pair(attn.to_k.in_features)
            self._handles.append(attn.to_k.register_forward_pre_hook(_ContextHook(self, mlp_k)))
            self._handles.append(attn.to_v.register_forward_pre_hook(_ContextHook(self, mlp_v)))
        return self

    def detach(self) -> None:
        """Remove the hooks: the UNet is the plain model again. Nothing happens if not attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_strength(self, strength: float) -> None:
        """s in c + s * mlp(c); used from the next forward on, also in training."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
                or not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number (1 = as trained, 0 = off), "
                             f"got {strength!r}")
        self.strength = float(strength)


# ---- files ---------------------------------------------------------------------------------------
def save_hypernetwork(hypernetwork: Hypernetwork, path: str | Path) -> Path:
    """Write `path` atomically: .pt in the web UI's layout, .safetensors in ldmkit's."""
    path = Path(path)
    options = _file_options(hypernetwork)
    if path.suffix == ".safetensors":
        tensors = {key.removeprefix("mlps."): value.detach().cpu().contiguous()
                   for key, value in hypernetwork.state_dict().items()}
        metadata = {"format": FORMAT, "hypernetwork": json.dumps(options)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    if path.suffix != ".pt":
        raise ValueError(f"{path}: give a .pt (the web UI's layout) or .safetensors (ldmkit's) "
                         f"file name")
    state: dict[Any, Any] = {}
    for width in hypernetwork.widths:  # the UI writes a tuple; weights_only reads it back
        state[width] = tuple({k: v.detach().cpu() for k, v in mlp.state_dict().items()}
                             for mlp in hypernetwork.pair(width))
    state.update(options)
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_hypernetwork(path: str | Path) -> Hypernetwork:
    """Read a .pt (web UI layout) or .safetensors (ldmkit layout) hypernetwork, told by content.
    Pickles are read with torch.load(weights_only=True) only; anything else is refused."""
    path = Path(path)
    if detect_format(path) == SAFETENSORS:
        state = _state_from_safetensors(path)
    else:
        state = safe_torch_load(path, "cpu")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a hypernetwork "
                                  f"(a dict with context widths as keys)")
    return _from_state(state, path)


def apply_hypernetwork(pipe, path: str | Path, strength: float = 1.0,
                       self_attention: bool = True, replace: bool = False) -> Hypernetwork:
    """Load the hypernetwork at `path` and attach it to pipe.unet; detach() it to undo.
    self_attention: as the web UI, also on attn1 layers whose width has an MLP in the file."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, nn.Module):
        raise ValueError(f"{type(pipe).__name__} has no .unet to attach a hypernetwork to: give "
                         f"an ldmkit Pipeline")
    return load_hypernetwork(path).attach(unet, strength, self_attention, replace)


def _file_options(hypernetwork: Hypernetwork) -> dict[str, Any]:
    """The web UI's option keys, as it writes them."""
    o = hypernetwork.options
    return {
        "layer_structure": list(o.layer_structure), "activation_func": o.activation,
        "is_layer_norm": o.layer_norm, "weight_initialization": o.weight_init,
        "use_dropout": any(p > 0 for p in o.dropout_structure),
        "dropout_structure": list(o.dropout_structure),
        "last_layer_dropout": o.dropout_structure[-2] > 0, "activate_output": o.activate_output,
        "name": hypernetwork.name, "step": hypernetwork.step,
        "sd_checkpoint": hypernetwork.sd_checkpoint,
        "sd_checkpoint_name": hypernetwork.sd_checkpoint_name,
    }


def _state_from_safetensors(path: Path) -> dict[Any, Any]:
    """ldmkit's flat layout back into the web UI's dict."""
    tensors, metadata = read_weights(path)
    if metadata.get("format") != FORMAT or "hypernetwork" not in metadata:
        raise CheckpointError(f"{path} is not an ldmkit hypernetwork (its safetensors metadata has "
                              f"no format {FORMAT!r} with options); web UI hypernetworks are .pt")
    try:
        state = json.loads(metadata["hypernetwork"])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt hypernetwork options in its metadata ({error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the hypernetwork options in its metadata are not an object")
    pairs: dict[int, tuple[dict, dict]] = {}
    for key, tensor in tensors.items():
        width, which, rest = (key.split(".", 2) + ["", ""])[:3]
        if not width.isdigit() or which not in ("k", "v") or not rest:
            raise CheckpointError(f"{path}: tensor {key!r} is not named '<width>.k|v.linear.N...'")
        pairs.setdefault(int(width), ({}, {}))[which == "v"][rest] = tensor
    state.update(pairs)
    return state


def _from_state(state: dict[Any, Any], path: Path) -> Hypernetwork:
    """A Hypernetwork from the web UI's dict; missing options take the UI's defaults on load."""
    layers = {k: v for k, v in state.items() if isinstance(k, int) and not isinstance(k, bool)}
    if not layers:
        keys = ", ".join(map(repr, list(state)[:8]))
        raise CheckpointError(f"{path} holds no hypernetwork MLPs (no context-width keys such as "
                              f"768); its keys: {keys}")
    dropout = state.get("dropout_structure")
    structure = state.get("layer_structure") or [1, 2, 1]
    if not dropout:  # older files: use_dropout and last_layer_dropout only
        dropout = _legacy_dropout(len(structure), bool(state.get("use_dropout")),
                                  bool(state.get("last_layer_dropout")))
    try:
        options = HypernetworkOptions(
            layer_structure=tuple(structure), activation=state.get("activation_func") or "linear",
            layer_norm=bool(state.get("is_layer_norm", False)), dropout_structure=tuple(dropout),
            activate_output=bool(state.get("activate_output", True)),  # the UI's default on load
            weight_init=state.get("weight_initialization") or "Normal")
        hypernetwork = Hypernetwork(sorted(layers), options, str(state.get("name") or path.stem))
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    hypernetwork.step = int(state.get("step") or 0)
    hypernetwork.sd_checkpoint = state.get("sd_checkpoint")
    hypernetwork.sd_checkpoint_name = state.get("sd_checkpoint_name")
    for width, pair in layers.items():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(d, dict) for d in pair)):
            raise CheckpointError(f"{path}: entry {width} is not a pair of state dicts (k, v)")
        for which, mlp, weights in zip("kv", hypernetwork.pair(width), pair):
            _load_mlp(mlp, _rename_legacy(weights), f"{path}: the {width}-wide {which} MLP")
    return hypernetwork.eval()


def _legacy_dropout(n: int, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """The web UI's dropout for files without dropout_structure: 0.3 after every hidden layer but
    the last, which has it only with last_layer_dropout ([0] + [0.3] * (n - 3) + [q] + [0])."""
    if not use_dropout:
        return [0.0] * n
    last = 0.3 if last_layer_dropout else 0.0
    return ([0.0] + [0.3] * (n - 3) + [last] + [0.0])[:n]


def _rename_legacy(weights: dict) -> dict:
    """The first hypernetworks (NovelAI's) named their two Linears linear1 / linear2."""
    renames = {"linear1.": "linear.0.", "linear2.": "linear.1."}
    return {next((new + k[len(old):] for old, new in renames.items() if k.startswith(old)), k): v
            for k, v in weights.items()}


def _load_mlp(mlp: HypernetworkModule, weights: dict, where: str) -> None:
    expected = mlp.state_dict()
    if set(weights) != set(expected):
        raise CheckpointError(
            f"{where} does not match the options the file records (layer_structure, "
            f"activation_func, is_layer_norm, dropout_structure, activate_output): expected keys "
            f"{sorted(expected)}, the file has {sorted(weights)}")
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{where}: {key} is {shape}, expected "
                                  f"{tuple(expected[key].shape)} from the recorded layer_structure")
    mlp.load_state_dict(weights)

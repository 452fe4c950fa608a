"""to_channels_last_owned: channels_last, and no tensor left viewing the mapped weight file."""

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldmkit.utils.memory_format import to_channels_last_owned


def test_no_tensor_views_the_loaded_file_after_conversion(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(1, 3, 6, 6))  # materialize the linear layer
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = load_file(tmp_path / "w.safetensors")
    spans = [(t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes()) for t in loaded.values()]
    expected = {k: v.clone() for k, v in loaded.items()}
    model.load_state_dict(loaded, assign=True)
    parameters = list(model.parameters())
    assert any(a <= p.data_ptr() < b for p in parameters for a, b in spans)  # assign=True: views of the file

    assert to_channels_last_owned(model) is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]  # the same Parameters
    for name, tensor in model.state_dict().items():
        assert not any(a <= tensor.data_ptr() < b for a, b in spans), f"{name} still views the file"
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)

"""A1111's parameters text: ldmkit's settings survive the round trip, and real A1111 texts (with
quoted values, multi-line prompts, old sampler names) read into ldmkit's names."""

import pytest

from ldmkit.pipelines.infotext import format_infotext, parse_infotext, sampler_from_a1111


def test_ldmkit_settings_round_trip():
    settings = {"prompt": "a photo, of a sneaker", "negative_prompt": "blurry: dark", "sampler": "dpmpp_2m_sde",
                "steps": 20, "guidance": 3.5, "seed": 7, "size": "32x32", "model": "fashion-mnist", "task": "img2img",
                "strength": 0.6, "loras": ["a.safetensors:0.8", "b.safetensors:1.0"], "spacing": "karras",
                "software": "ldmkit 0.1.0"}
    text = format_infotext(settings)
    assert text.splitlines()[0] == "a photo, of a sneaker" and text.splitlines()[1] == "Negative prompt: blurry: dark"
    assert text.splitlines()[2].startswith("Steps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 3.5")
    assert parse_infotext(text) == settings


def test_a1111_text_reads_into_ldmkit_names():
    text = ('masterpiece, a cat\non a mat\nNegative prompt: ugly, "bad"\nSteps: 28, Sampler: DPM++ 2M Karras, '
            'CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, '
            'Lora hashes: "x: 123, y: 456", Version: v1.6.0')
    got = parse_infotext(text)
    assert got["prompt"] == "masterpiece, a cat\non a mat" and got["negative_prompt"] == 'ugly, "bad"'
    assert (got["steps"], got["sampler"], got["spacing"], got["guidance"], got["seed"]) == (
        28, "dpmpp_2m", "karras", 7, 1234)
    assert got["Lora hashes"] == "x: 123, y: 456" and got["Model hash"] == "6ce0161689" and got["model"] == "v1-5"


def test_a_text_without_settings_is_all_prompt():
    assert parse_infotext("just words, no settings") == {"prompt": "just words, no settings", "negative_prompt": ""}


@pytest.mark.parametrize("name, want", [("Euler a", ("euler_a", None)), ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
                                        ("ddim", ("ddim", None))])
def test_sampler_names(name, want):
    assert sampler_from_a1111(name) == want


def test_unknown_sampler_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown sampler 'LMS'.*Euler a"):
        sampler_from_a1111("LMS")

from dataclasses import dataclass, field

import pytest

from onepeace.config import (ConfigError, ModelConfig, apply_overrides, from_dict, model_config,
                             resolve_model_config, to_dict)


@dataclass
class Inner:
    rate: float = 0.1
    names: tuple[str, ...] = ("a",)


@dataclass
class Outer:
    pair: tuple[float, int] = (0.5, 1)
    steps: int = 10
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_from_dict_builds_nested_and_coerces():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"rate": 1, "names": ["x", "y"]}, "maybe": None, "pair": [2, 3]})
    assert cfg.steps == 3 and cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.names == ("x", "y")
    assert cfg.pair == (2.0, 3) and isinstance(cfg.pair[0], float)
    assert to_dict(cfg) == {"pair": [2.0, 3], "steps": 3, "flag": False, "inner": {"rate": 1.0, "names": ["x", "y"]},
                            "maybe": None}
    with pytest.raises(ConfigError, match=r"pair: expected 2 items, got 3"):
        from_dict(Outer, {"pair": [1, 2, 3]})
    with pytest.raises(ConfigError, match=r"pair\[1\]: expected an integer"):
        from_dict(Outer, {"pair": [1, "x"]})


def test_unknown_keys_are_named_with_their_path():
    with pytest.raises(ConfigError, match=r"unknown key inner\.rat\b.*valid keys under inner: names, rate"):
        from_dict(Outer, {"inner": {"rat": 0.2}})


@pytest.mark.parametrize("data, message", [
    ({"steps": "ten"}, r"steps: expected an integer, got 'ten'"),
    ({"steps": True}, r"steps: expected an integer"),
    ({"flag": 1}, r"flag: expected true or false"),
    ({"inner": 5}, r"inner: expected a mapping"),
    ({"inner": {"names": "abc"}}, r"inner.names: expected a list"),
])
def test_wrong_types_fail_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values_and_create_paths():
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=true", "f=hello"])
    assert out == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": True}, "f": "hello"}
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="is not a mapping"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_presets_and_validation():
    tiny = model_config("tiny")
    assert tiny.embed_dim == 64 and tiny.image_grid == 4
    big = resolve_model_config({"preset": "onepeace-4b", "vocab_size": 32000})
    assert (big.depth, big.embed_dim, big.num_heads, big.ffn_dim) == (40, 1536, 24, 6144)
    assert big.vocab_size == 32000 and big.decoder_dim == 768 and big.decoder_depth == 2
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        model_config("huge")
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        ModelConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ConfigError, match="unknown modality 'video'"):
        resolve_model_config({"preset": "tiny", "modalities": ["text", "video"]})
    with pytest.raises(ConfigError, match="attention_backend"):
        model_config("tiny", attention_backend="fast")


def test_retired_model_keys():
    """patch_size is not a setting any more (the stem's stride is 16): old files holding 16 still load, any
    other value is refused with the reason; the old relative-bucket keys name their replacement."""
    assert resolve_model_config({"preset": "tiny", "patch_size": 16}) == model_config("tiny")
    with pytest.raises(ConfigError, match=r"model\.patch_size: .*fixed stride of 16"):
        resolve_model_config({"preset": "tiny", "patch_size": 8})
    with pytest.raises(ConfigError, match=r"model\.rel_log_buckets: .*text_rel_buckets"):
        resolve_model_config({"preset": "tiny", "rel_log_buckets": 32})

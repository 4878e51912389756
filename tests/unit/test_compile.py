"""torch.compile of the encoder: no graph breaks in a fusion layer (checked with dynamo on CPU), and the
compiled model equals the eager one on CUDA."""

import pytest
import torch
import torch._dynamo

from onepeace.config import model_config
from onepeace.model import OnePeace
from onepeace.ops.attention import available_backends, flex_backward_supported


def layer_inputs(model, **inputs):
    captured = {}
    hook = model.encoder.layers[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("args", args))
    model.forward_encoder(**inputs)
    hook.remove()
    return captured["args"]


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_fusion_layer_traces_as_one_graph(backend):
    model = OnePeace(model_config("tiny", attention_backend=backend, drop_path_rate=0.2)).train()
    text = torch.randint(3, 1000, (2, 6))
    text[0, 4:] = 0
    with torch.set_grad_enabled(backend != "flex" or flex_backward_supported("cpu")):  # inference if need be
        args = layer_inputs(model, text=text, image=torch.randn(2, 3, 64, 64),
                            image_keep=torch.tensor([[0, 1, 2], [3, 4, 5]]))
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.encoder.layers[0])(*args)
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: inductor compiles the encoder for GPUs")
@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_compiled_encoder_matches_eager_on_cuda(backend):
    cfg = model_config("tiny", attention_backend=backend)
    eager = OnePeace(cfg).cuda().eval()
    compiled = OnePeace(model_config("tiny", attention_backend=backend, compile_encoder=True)).cuda().eval()
    compiled.load_state_dict(eager.state_dict())
    text = torch.randint(3, 1000, (4, 8), device="cuda")
    text[1, 5:] = 0
    image = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = eager.forward_encoder(text=text, image=image)
        b = compiled.forward_encoder(text=text, image=image)
    for m in a:
        torch.testing.assert_close(b[m].tokens.float(), a[m].tokens.float(), atol=3e-2, rtol=3e-2)

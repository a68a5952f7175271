"""Tests for ``mmgpt.cnn``: the receptive field, the residual block and the small CNN.

* ``receptive_field`` against hand-computed values and against an *empirical* measurement:
  the input pixels whose gradient is non-zero for one output position, over random stacks of
  convolutions and pooling layers (the book's and PyTorch's) and over ``SmallCNN`` itself;
* ``ResidualBlock`` against the same block written with ``nn.Conv2d`` (values and gradients),
  its shortcut choice, and gradient flow through the identity path;
* ``SmallCNN``: built from ``mmgpt``'s own layers, output shapes (predicted == actual) over
  configurations and image sizes, feature maps, and clear errors for wrong input.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import as_pair, assert_close
from torch import nn

from mmgpt.cnn import ReceptiveField, ResidualBlock, SmallCNN, receptive_field
from mmgpt.conv import Conv2d
from mmgpt.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

DTYPE = torch.float64
ERRORS = (ValueError, TypeError)

# nn.Conv2d warns that it copies the input for padding="same" with even kernels; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


def _positive(model: nn.Module) -> nn.Module:
    """Make every weight positive and put batch norm in eval mode (a positive scaling), so that
    with a positive input every activation is positive, ReLU passes everything, and an input
    pixel has a non-zero gradient exactly when it can influence the output."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.05)
    return model


def _empirical_box(model: nn.Module, shape, position, trials: int = 1, seed: int = 0):
    """(top, left, bottom, right) of the input pixels that move output ``position``.

    The gradient of one output position (summed over channels) with respect to the input is
    non-zero on the pixels it depends on. Max pooling passes the gradient to one winner per
    window, so several random inputs are combined."""
    g = torch.Generator().manual_seed(seed)
    support = torch.zeros(shape[-2:], dtype=torch.bool)
    for _ in range(trials):
        x = torch.rand(shape, generator=g, dtype=DTYPE).add_(0.1).requires_grad_(True)
        out = model(x)
        out[0, :, position[0], position[1]].sum().backward()
        support |= x.grad[0].abs().sum(0) > 0
    rows, cols = support.any(1).nonzero()[:, 0], support.any(0).nonzero()[:, 0]
    box = (rows.min().item(), cols.min().item(), rows.max().item(), cols.max().item())
    return box, support


def _theory_box(rf: ReceptiveField, position):
    top, left, bottom, right = rf.box(*position)
    assert all(float(v).is_integer() for v in (top, left, bottom, right)), rf
    return int(top), int(left), int(bottom), int(right)


# ---------------------------------------------------------------------------------------------
# receptive_field: known values
# ---------------------------------------------------------------------------------------------

def test_receptive_field_known_values():
    assert receptive_field([]) == ReceptiveField((1, 1), (1, 1), (0.0, 0.0))
    assert receptive_field([(3, 1)]).size == (3, 3)
    assert receptive_field([(3, 1), (3, 1)]).size == (5, 5)  # two 3x3 see a 5x5 window
    assert receptive_field([(3, 1)] * 3).size == (7, 7)
    # conv 3x3, pool 2x2/2, conv 3x3: the second conv's taps are 2 input pixels apart
    rf = receptive_field([(3, 1), (2, 2), (3, 1)])
    assert rf.size == (8, 8) and rf.jump == (2, 2)
    assert receptive_field([(3, 1, 2)]).size == (5, 5)  # dilation 2
    assert receptive_field([(3, 2, 1, 1)]).start == (0.0, 0.0)  # padding 1 centres a 3x3
    assert receptive_field([(2, 2)]).start == (0.5, 0.5)  # an even window is centred between pixels
    # ResNet's stem: conv 7x7/2 pad 3, max pool 3x3/2 pad 1 -> 11 pixels, 4 apart
    stem = receptive_field([nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)])
    assert stem == ReceptiveField((11, 11), (4, 4), (0.0, 0.0))
    # non-square kernels and strides, keyword dicts, padding "same"
    rf = receptive_field([dict(kernel_size=(3, 1), stride=(1, 2)), Conv2d(1, 1, (1, 5), padding="same")])
    assert rf.size == (3, 9) and rf.jump == (1, 2)
    assert rf.box(0, 0) == (0.0, -4.0, 2.0, 4.0)


def test_receptive_field_of_the_default_small_cnn():
    rf = SmallCNN().receptive_field()
    # stem 7 (jump 2) -> pool 11 (jump 4) -> stage 1: +2*2*4 = 27 -> stage 2: +2*4 + 2*8 = 51
    # (jump 8) -> stage 3: +2*8 + 2*16 = 99 (jump 16)
    assert rf == ReceptiveField((99, 99), (16, 16), (0.0, 0.0))
    assert SmallCNN(pool=None).receptive_field().jump == (8, 8)


@pytest.mark.parametrize("layers,exc,pattern", [
    ([nn.AdaptiveAvgPool2d(1)], TypeError, r"layers\[0\].*AdaptiveAvgPool2d"),
    ([(3, 1), AdaptiveAvgPool2d(2)], TypeError, r"layers\[1\]"),
    ([nn.Linear(3, 3)], TypeError, r"Linear"),
    ([(3,)], ValueError, r"kernel_size, stride"),
    ([(3, 1, 1, 1, 1)], ValueError, r"kernel_size, stride"),
    ([(0, 1)], ValueError, r"\bkernel_size\b"),
    ([(3, 0)], ValueError, r"\bstride\b"),
    ([dict(kernel=3)], ValueError, r"kernel_size"),
], ids=["adaptive", "adaptive-second", "linear", "tuple-too-short", "tuple-too-long", "kernel-0", "stride-0",
        "dict-bad-key"])
def test_receptive_field_rejects_what_it_cannot_measure(layers, exc, pattern):
    with pytest.raises(exc, match=pattern):
        receptive_field(layers)


# ---------------------------------------------------------------------------------------------
# receptive_field == empirical measurement
# ---------------------------------------------------------------------------------------------

def _random_stack(rng: random.Random, allow_max: bool):
    layers = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["conv", "nnconv", "avg"] + (["max"] if allow_max else []))
        k = rng.randint(1, 4)
        if kind in ("conv", "nnconv"):
            d = rng.randint(1, 3)
            p = rng.choice([0, k // 2, "same"])
            s = 1 if p == "same" else rng.randint(1, 2)
            cls = Conv2d if kind == "conv" else nn.Conv2d
            layers += [cls(2, 2, k, stride=s, padding=p, dilation=d), nn.ReLU()]
        elif kind == "avg":
            layers.append(AvgPool2d(k, stride=rng.randint(1, 2), padding=rng.randint(0, k // 2)))
        else:
            layers.append(MaxPool2d(k, stride=rng.randint(1, 2), padding=rng.randint(0, k // 2),
                                    dilation=rng.randint(1, 2)))
    return layers


def _stack_cases(n, seed, allow_max):
    rng = random.Random(seed)
    return [(i, _random_stack(rng, allow_max)) for i in range(n)]


def _stack_id(case):
    index, layers = case
    return f"{index}-" + "+".join(type(m).__name__.replace("2d", "") + (
        f"k{m.kernel_size[0] if isinstance(m.kernel_size, tuple) else m.kernel_size}"
        f"s{m.stride[0] if isinstance(m.stride, tuple) else m.stride}"
        if hasattr(m, "kernel_size") else "") for m in layers if not isinstance(m, nn.ReLU))


LINEAR_STACKS = _stack_cases(40, seed=1, allow_max=False)
MAX_STACKS = _stack_cases(12, seed=2, allow_max=True)


def _measure_and_compare(layers, trials, seed):
    torch.manual_seed(seed)
    model = _positive(nn.Sequential(nn.Conv2d(1, 2, 1), *layers))  # 1 channel in, 2 inside
    rf = receptive_field(model)
    # an input large enough that the chosen output's field lies well inside it
    position = tuple(2 + (rf.size[a] // rf.jump[a]) for a in range(2))
    size = [int(rf.start[a] + position[a] * rf.jump[a] + rf.size[a]) + 6 for a in range(2)]
    expected = _theory_box(rf, position)
    assert expected[0] >= 0 and expected[1] >= 0, (expected, size)
    box, support = _empirical_box(model, (1, 1, *size), position, trials=trials, seed=seed)
    return rf, expected, box, support


@pytest.mark.parametrize("case", LINEAR_STACKS, ids=_stack_id)
def test_receptive_field_equals_gradient_support(case):
    """Without max pooling, the pixels that move one output span exactly the field. (Inside
    it, dilation or a stride larger than a kernel can leave holes; the field is their
    bounding box.)"""
    index, layers = case
    rf, expected, box, support = _measure_and_compare(layers, trials=1, seed=index)
    assert box == expected, f"theory {rf} -> {expected}, gradient says {box}"
    gapless = all(getattr(m, "dilation", 1) in (1, (1, 1)) and as_pair(m.stride)[0] <= as_pair(m.kernel_size)[0]
                  for m in layers if hasattr(m, "kernel_size"))
    if gapless:  # then every pixel of the field counts
        assert support.sum().item() == rf.size[0] * rf.size[1]


def test_dilation_leaves_holes_in_the_field():
    torch.manual_seed(0)
    model = _positive(nn.Sequential(Conv2d(1, 1, 3, dilation=2), Conv2d(1, 1, 3, dilation=2)))
    rf = receptive_field(model)
    assert rf.size == (9, 9)
    box, support = _empirical_box(model, (1, 1, 15, 15), (3, 3))
    assert box == _theory_box(rf, (3, 3)) == (3, 3, 11, 11)
    assert support.sum().item() == 25  # only every other row and column: 5 x 5 of the 9 x 9


@pytest.mark.parametrize("case", MAX_STACKS, ids=_stack_id)
def test_receptive_field_with_max_pooling_bounds_the_gradient(case):
    """Max pooling sends the gradient to one winner per window: for one input the support is
    inside the field, and over many random inputs it fills the field's bounding box."""
    index, layers = case
    rf, expected, box_one, _ = _measure_and_compare(layers, trials=1, seed=index)
    top, left, bottom, right = expected
    assert top <= box_one[0] and left <= box_one[1] and box_one[2] <= bottom and box_one[3] <= right
    _, _, box_many, _ = _measure_and_compare(layers, trials=40, seed=index)
    assert box_many == expected, f"theory {rf} -> {expected}, gradient over 40 inputs says {box_many}"


def test_stacks_cover_every_layer_kind():
    kinds = {type(m) for _, layers in LINEAR_STACKS + MAX_STACKS for m in layers}
    assert {Conv2d, nn.Conv2d, AvgPool2d, MaxPool2d} <= kinds
    convs = [m for _, layers in LINEAR_STACKS for m in layers if isinstance(m, (Conv2d, nn.Conv2d))]
    assert any(m.padding == "same" for m in convs) and any(m.dilation == (3, 3) for m in convs)
    assert any(m.stride == (2, 2) for m in convs)
    assert any(isinstance(m, MaxPool2d) and m.dilation == 2 for _, layers in MAX_STACKS for m in layers)


@pytest.mark.parametrize("pool", ["avg", "max", None])
def test_small_cnn_receptive_field_equals_gradient_support(pool):
    torch.manual_seed(0)
    model = _positive(SmallCNN(widths=(2, 3, 2), pool=pool))
    rf = model.receptive_field()
    position = (6, 6) if pool else (12, 12)
    expected = _theory_box(rf, position)
    trials = 20 if pool == "max" else 1
    box, support = _empirical_box(model, (1, 3, 192, 192), position, trials=trials)
    assert box == expected, f"theory {rf} -> {expected}, gradient says {box}"
    if pool != "max":
        assert support.sum().item() == rf.size[0] * rf.size[1]


# ---------------------------------------------------------------------------------------------
# ResidualBlock
# ---------------------------------------------------------------------------------------------

class _ReferenceBlock(nn.Module):
    """The same block with PyTorch's layers (as in torchvision's BasicBlock)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@pytest.mark.parametrize("c_in,c_out,stride,train", [
    (4, 4, 1, True), (4, 4, 1, False), (4, 6, 1, True), (4, 6, 2, False), (3, 3, 2, True), (5, 2, 3, True),
], ids=["identity-train", "identity-eval", "widen", "widen-stride2-eval", "stride2-same-width", "narrow-stride3"])
def test_residual_block_matches_reference_forward_and_backward(c_in, c_out, stride, train):
    torch.manual_seed(0)
    ref = _ReferenceBlock(c_in, c_out, stride).double()
    with torch.no_grad():  # non-trivial batch-norm parameters and running statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    ours = ResidualBlock(c_in, c_out, stride).double()
    ours.load_state_dict(ref.state_dict())  # same names, same shapes
    assert isinstance(ours.shortcut, nn.Identity) == (stride == 1 and c_in == c_out)
    ours.train(train), ref.train(train)
    x = torch.randn(2, c_in, 9, 8, dtype=DTYPE)
    ours_x, ref_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, expected = ours(ours_x), ref(ref_x)
    assert_close(out, expected, "output", 1e-10)
    upstream = torch.randn_like(expected)
    out.backward(upstream)
    expected.backward(upstream)
    assert_close(ours_x.grad, ref_x.grad, "x.grad", 1e-10)
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        assert_close(p.grad, q.grad, f"{name}.grad", 1e-10)


def test_residual_block_is_the_identity_when_its_branch_is_silenced():
    """With the last batch norm's scale and shift at zero the branch outputs 0, so the block
    is ReLU(x): the gradient still reaches the input, through the shortcut alone."""
    block = ResidualBlock(3, 3).double().eval()
    with torch.no_grad():
        block.bn2.weight.zero_(), block.bn2.bias.zero_()
    x = torch.randn(2, 3, 6, 6, dtype=DTYPE, requires_grad=True)
    out = block(x)
    assert torch.equal(out, F.relu(x))
    out.sum().backward()
    assert torch.equal(x.grad, (x > 0).to(DTYPE))


def test_shortcuts_carry_the_gradient_where_a_default_init_plain_stack_loses_it():
    """Twelve untrained blocks, PyTorch's default init, batch norm in eval mode on fresh
    statistics (the setting where scale shrinks layer by layer, Chapter 00): the input gradient
    of the residual stack stays within a factor ~10 of 1, while the same convolutions without
    shortcuts shrink it 100-fold or more. (With He init and batch norm in training mode the
    plain stack keeps its gradient; what shortcuts fix there is optimisation, Chapter 02.)"""
    torch.manual_seed(0)
    blocks = [ResidualBlock(8, 8).double().eval() for _ in range(12)]
    x = torch.randn(1, 8, 16, 16, dtype=DTYPE)

    def input_grad_norm(step):
        xi = x.clone().requires_grad_(True)
        h = xi
        for block in blocks:
            h = step(block, h)
        h.pow(2).sum().div(2).backward(inputs=[xi])
        return xi.grad.norm().item() / h.detach().norm().item()

    residual = input_grad_norm(lambda b, h: b(h))
    plain = input_grad_norm(lambda b, h: F.relu(b.residual(h)))
    assert residual > 0.1 and plain < residual / 100, (residual, plain)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(in_channels=0, out_channels=4), r"\bin_channels\b"),
    (dict(in_channels=4, out_channels=-1), r"\bout_channels\b"),
    (dict(in_channels=4, out_channels=4, stride=0), r"\bstride\b"),
    (dict(in_channels=4, out_channels=4, stride=1.5), r"\bstride\b"),
], ids=["in-0", "out-negative", "stride-0", "stride-float"])
def test_residual_block_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ERRORS, match=pattern):
        ResidualBlock(**kwargs)


# ---------------------------------------------------------------------------------------------
# SmallCNN
# ---------------------------------------------------------------------------------------------

def test_small_cnn_is_built_from_the_books_layers():
    model = SmallCNN()
    convs = [m for m in model.modules() if isinstance(m, (Conv2d, nn.Conv2d))]
    assert convs and all(isinstance(m, Conv2d) for m in convs)
    assert isinstance(model.pool, MaxPool2d) and isinstance(SmallCNN(pool="avg").pool, AvgPool2d)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3 and len([m for m in SmallCNN(blocks_per_stage=2).modules()
                                     if isinstance(m, ResidualBlock)]) == 6
    assert sum(p.numel() for p in model.parameters()) == 311_200


def test_small_cnn_default_shape_224():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 128, 14, 14) == model.output_shape(x.shape)
    assert model.out_channels == 128


SHAPE_CASES = [
    (dict(), (1, 3, 32, 32)),
    (dict(), (2, 3, 33, 47)),
    (dict(), (3, 19, 1)),  # unbatched, one pixel wide
    (dict(widths=(4,)), (2, 3, 17, 16)),
    (dict(widths=(4, 8, 8, 16)), (2, 3, 64, 40)),
    (dict(widths=(4, 6), blocks_per_stage=3, pool=None), (2, 3, 21, 30)),
    (dict(widths=(4, 6), pool="avg"), (2, 3, 15, 9)),
    (dict(in_channels=1, widths=(5, 7)), (2, 1, 28, 28)),
    (dict(in_channels=4, widths=(2, 2, 2)), (4, 50, 50)),
]


@pytest.mark.parametrize("kwargs,shape", SHAPE_CASES,
                         ids=[("-".join(f"{k}={v}" for k, v in kw.items()) or "default") + f"-in{'x'.join(map(str, s))}"
                              for kw, s in SHAPE_CASES])
def test_small_cnn_output_shape_is_predicted(kwargs, shape):
    torch.manual_seed(0)
    model = SmallCNN(**kwargs).eval()
    x = torch.randn(shape)
    maps = model.feature_maps(x)
    assert list(maps) == ["stem", "pool"] + [f"stage{i + 1}" for i in range(len(model.widths))]
    assert torch.equal(maps[list(maps)[-1]], model(x))
    assert model(x).shape == model.output_shape(shape)
    for i, width in enumerate(model.widths):
        assert maps[f"stage{i + 1}"].shape[-3] == width


def test_small_cnn_trains_a_step():
    """Every parameter receives a gradient from a loss on the feature map, in training mode."""
    torch.manual_seed(0)
    model = SmallCNN(widths=(4, 8)).train()
    loss = model(torch.randn(2, 3, 32, 32)).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("x,pattern", [
    (torch.randn(2, 4, 32, 32), r"3 channels"),
    (torch.randn(2, 1, 32, 32), r"3 channels"),
    (torch.randn(32, 32), r"4-D"),
    (torch.randn(1, 2, 3, 32, 32), r"4-D"),
    (torch.randn(2, 3, 0, 8), r"at least 1 pixel"),
    ([[1.0]], r"\bx\b.*tensor"),
], ids=["4-channels", "1-channel", "2d", "5d", "empty-height", "not-a-tensor"])
def test_small_cnn_rejects_wrong_images(x, pattern):
    model = SmallCNN(widths=(4, 4))
    with pytest.raises(ERRORS, match=pattern):
        model(x)
    if isinstance(x, torch.Tensor):
        with pytest.raises(ERRORS, match=pattern):
            model.output_shape(x.shape)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(widths=()), r"\bwidths\b"),
    (dict(widths=(4, 0)), r"\bwidths\b"),
    (dict(widths=(4, True)), r"\bwidths\b"),
    (dict(widths=8), r"\bwidths\b"),
    (dict(blocks_per_stage=0), r"\bblocks_per_stage\b"),
    (dict(pool="median"), r"\bpool\b"),
    (dict(in_channels=0), r"\bin_channels\b"),
], ids=["widths-empty", "widths-zero", "widths-bool", "widths-int", "blocks-0", "pool-unknown", "in-channels-0"])
def test_small_cnn_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ERRORS, match=pattern):
        SmallCNN(**kwargs)


def test_group_norm_makes_each_image_independent_of_the_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for norm, independent in (("group", True), ("batch", False)):
        model = SmallCNN(widths=(8, 16), norm=norm).train()
        whole = model(x)[:2]
        half = model(x[:2])
        assert torch.allclose(whole, half, atol=1e-5) == independent, norm
    assert any(isinstance(m, nn.GroupNorm) for m in SmallCNN(norm="group").modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in SmallCNN(norm="group").modules())


@pytest.mark.parametrize("make", [lambda: SmallCNN(norm="layer"),
                                  lambda: ResidualBlock(4, 4, norm=None)])
def test_norm_must_be_batch_or_group(make):
    with pytest.raises(ValueError, match="norm must be one of"):
        make()



@pytest.mark.parametrize("pool,norm", [("max", "batch"), ("avg", "group"), (None, "batch")])
def test_small_cnn_step_reads_no_values_on_the_host(pool, norm):
    """A training forward and backward run on the meta device (shapes, no values): nothing in
    the network branches on the data or calls ``.item()``, so no step waits for a GPU."""
    with torch.device("meta"):
        model = SmallCNN(widths=(4, 8), pool=pool, norm=norm).train()
        out = model(torch.empty(2, 3, 33, 20))
        out.sum().backward()
    assert out.shape == model.output_shape((2, 3, 33, 20))
    assert all(p.grad is not None for p in model.parameters())


def _plain_input_gradient(blocks, train_mode):
    """Norm of the gradient reaching the input of ``blocks`` used without their shortcut."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 8, 8, generator=gen, dtype=DTYPE).requires_grad_(True)
    h = x
    for block in blocks:
        h = F.relu(block.train(train_mode).residual(h))
    upstream = torch.randn(h.shape, generator=gen, dtype=DTYPE) / h.numel() ** 0.5
    (grad,) = torch.autograd.grad(h, x, upstream)
    return grad.norm().item()


def test_plain_stack_loses_the_gradient_only_with_default_init_and_fresh_eval_statistics():
    """Chapter 02's claim: eight plain blocks (sixteen convolutions) lose the gradient with
    PyTorch's default initialisation (a sixth of He's variance) and batch norm in eval mode on
    fresh statistics (which normalises nothing); He initialisation, or batch norm in training
    mode, keeps it. Vanishing gradients are a matter of scale, not what shortcuts are for."""
    torch.manual_seed(0)
    default = [ResidualBlock(16, 16).to(DTYPE) for _ in range(8)]
    torch.manual_seed(0)
    he = [ResidualBlock(16, 16).to(DTYPE) for _ in range(8)]
    for block in he:
        for conv in (block.conv1, block.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    fan_in = default[0].conv1.weight[0].numel()  # 16 channels x 3 x 3
    for blocks, variance in ((default, 1 / (3 * fan_in)), (he, 2 / fan_in)):
        weights = torch.cat([b.conv1.weight.flatten() for b in blocks])
        assert 0.9 * variance < weights.var().item() < 1.1 * variance
    collapsed = _plain_input_gradient(default, train_mode=False)
    he_eval = _plain_input_gradient(he, train_mode=False)
    default_train = _plain_input_gradient(default, train_mode=True)
    assert collapsed < 1e-4 * min(he_eval, default_train), (collapsed, he_eval, default_train)
    assert min(he_eval, default_train) > 0.1, (he_eval, default_train)

"""PyTorch reference for the throughput benchmark: RepDistiller's CIFAR
ResNets and its KD training step, written in this project.

Experiment-side code: `benchmarks/bench_throughput.py` and its test import
it; the library never does. It needs `torch` (the `bench` extra).

Models: a line-by-line port of RepDistiller's `models/resnet.py`
(Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR
2020; github.com/HobbitLong/RepDistiller) for the basic-block CIFAR ResNets:
3x3 stem conv-BN-ReLU, three stages of `n = (depth - 2) / 6` BasicBlocks
(strides 1, 2, 2; a 1x1 conv-BN shortcut whenever the stride or the width
changes), `AvgPool2d(8)` and a linear classifier; convs kaiming-normal
fan_out, BN gamma 1 / beta 0, the classifier at PyTorch's default init.
`forward(x, is_feat=True)` returns `([f0, f1, f2, f3, f4], logits)` as in
RepDistiller.

Training step (`KDTrainer.distill_step`): the body of RepDistiller's
`train_distill` for `--distill kd`: the teacher in eval mode under
`torch.no_grad()`, the student in train mode,
`loss = 0.1 · CE(z_s, y) + 0.9 · DistillKL_T=4(z_s, z_t)`, top-1/top-5
accuracy and `loss.item()` bookkeeping, `zero_grad / backward / step` with
`SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)`.
"""

import torch
import torch.nn.functional as F
from torch import nn

# -- models (RepDistiller models/resnet.py) ---------------------------------


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                     padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None,
                 is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        preact = out
        out = F.relu(out)
        if self.is_last:
            return out, preact
        return out


class ResNet(nn.Module):
    """RepDistiller's CIFAR `ResNet(depth, num_filters, "basicblock")`."""

    def __init__(self, depth, num_filters, num_classes=100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n+2 for a basic-block ResNet. Received: "
                f"depth={depth}"
            )
        n = (depth - 2) // 6
        block = BasicBlock
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                        nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion,
                          kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample,
                        blocks == 1)]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes,
                                is_last=(i == blocks - 1)))
        return nn.Sequential(*layers)

    def forward(self, x, is_feat=False, preact=False):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)  # 32x32
        f0 = x
        x, f1_pre = self.layer1(x)  # 32x32
        f1 = x
        x, f2_pre = self.layer2(x)  # 16x16
        f2 = x
        x, f3_pre = self.layer3(x)  # 8x8
        f3 = x
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        f4 = x
        x = self.fc(x)
        if is_feat:
            if preact:
                return [f0, f1_pre, f2_pre, f3_pre, f4], x
            return [f0, f1, f2, f3, f4], x
        return x


_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
ARCHITECTURES = {
    "resnet8": (8, _PLAIN),
    "resnet14": (14, _PLAIN),
    "resnet20": (20, _PLAIN),
    "resnet32": (32, _PLAIN),
    "resnet44": (44, _PLAIN),
    "resnet56": (56, _PLAIN),
    "resnet110": (110, _PLAIN),
    "resnet8x4": (8, _X4),
    "resnet32x4": (32, _X4),
}


def get(name, num_classes=100):
    """Builds RepDistiller's `model_dict[name](num_classes=num_classes)`."""
    if name not in ARCHITECTURES:
        raise ValueError(
            f"No PyTorch reference for {name!r}. Known models: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    depth, filters = ARCHITECTURES[name]
    return ResNet(depth, filters, num_classes=num_classes)


def count_parameters(model):
    """Returns `(parameters, state)`: the number of learnable parameters
    (Keras' trainable weights) and of parameters plus BN running
    mean/variance (Keras' `count_params()`; `num_batches_tracked` has no
    Keras counterpart and is left out)."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for name, b in model.named_buffers()
                  if not name.endswith("num_batches_tracked"))
    return params, params + buffers


# -- losses and the training step (RepDistiller train_distill, kd) ----------


class DistillKL(nn.Module):
    """RepDistiller's `DistillKL`: `KL(p_t ‖ p_s) · T² / B`, summed over
    classes and examples."""

    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return (F.kl_div(p_s, p_t, reduction="sum") * (self.T ** 2)
                / y_s.shape[0])


def accuracy(output, target, topk=(1,)):
    """RepDistiller's `accuracy`: precision@k in percent."""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


class KDTrainer:
    """One RepDistiller KD training step, and its two parts alone.

    Args:
        teacher, student: `ResNet`s.
        learning_rate, momentum, weight_decay: RepDistiller's SGD.
        gamma, alpha: weights of cross-entropy and KD (0.1, 0.9).
        temperature: KD temperature (4).
    """

    def __init__(self, teacher, student, learning_rate=0.05, momentum=0.9,
                 weight_decay=5e-4, gamma=0.1, alpha=0.9, temperature=4.0):
        self.teacher = teacher
        self.student = student
        self.gamma = gamma
        self.alpha = alpha
        self.criterion_cls = nn.CrossEntropyLoss()
        self.criterion_div = DistillKL(temperature)
        self.optimizer = torch.optim.SGD(
            student.parameters(), lr=learning_rate, momentum=momentum,
            weight_decay=weight_decay,
        )
        self.teacher.eval()
        self.student.train()

    def distill_step(self, x, y):
        """Teacher (no grad) + student forward, CE·γ + KD·α, SGD step.
        Returns `(loss, top1, top5)` as Python floats."""
        feat_s, logit_s = self.student(x, is_feat=True, preact=False)
        with torch.no_grad():
            feat_t, logit_t = self.teacher(x, is_feat=True, preact=False)
            feat_t = [f.detach() for f in feat_t]
        loss_cls = self.criterion_cls(logit_s, y)
        loss_div = self.criterion_div(logit_s, logit_t)
        loss = self.gamma * loss_cls + self.alpha * loss_div
        acc1, acc5 = accuracy(logit_s, y, topk=(1, 5))
        stats = (loss.item(), acc1[0].item(), acc5[0].item())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return stats

    def teacher_inference(self, x):
        """The teacher's forward pass alone, as inside `distill_step`."""
        with torch.no_grad():
            _, logit_t = self.teacher(x, is_feat=True, preact=False)
        return logit_t

    def student_step(self, x, y):
        """The student's cross-entropy training step alone (RepDistiller's
        `train_vanilla` body)."""
        output = self.student(x)
        loss = self.criterion_cls(output, y)
        acc1, acc5 = accuracy(output, y, topk=(1, 5))
        stats = (loss.item(), acc1[0].item(), acc5[0].item())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return stats

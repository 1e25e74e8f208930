#!/usr/bin/env python3
"""PyTorch eager reference of the lab reports' models, for side-by-side throughput.

A verbatim copy of the project's shared reference (`../shared/bench/torch_reference.py`,
outside this repository), shipped so that `scripts/benchmark.py --compare-torch` works
from a clone; only this paragraph and the usage line below differ.

The reports trained these models in PyTorch; a user's alternative to kmnist_lab is
exactly this code. It prints one line: `torch <arch> bs=<n> samples_per_s <rate>`.

    python scripts/torch_reference.py --arch bn_mlp --batch-size 128 --steps 300

Needs torch (on these machines: `pip install torch==2.13.0`, a local CPU wheel).
Measure kmnist_lab the same way, in the same run, and quote the ratio.
"""
import argparse
import time

import torch
import torch.nn as nn


def mlp(activation, batchnorm):
    layers, width = [nn.Flatten()], 784
    for units in (512, 128):
        layers.append(nn.Linear(width, units))
        if batchnorm:
            layers.append(nn.BatchNorm1d(units))
        if activation:
            layers.append(nn.ReLU(True))
        width = units
    return nn.Sequential(*layers, nn.Linear(width, 10))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def residual_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), Residual(16),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), Residual(32),
        nn.Flatten(), nn.Linear(512, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18():
    layers, cin = [nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


ARCHS = {
    "plain_mlp": lambda: mlp(activation=False, batchnorm=False),
    "relu_mlp": lambda: mlp(activation=True, batchnorm=False),
    "bn_mlp": lambda: mlp(activation=True, batchnorm=True),
    "residual_cnn": residual_cnn,
    "resnet18": resnet18,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="bn_mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ARCHS[args.arch]()
    n = 60 * args.batch_size
    x = torch.rand(n, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (n,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        j = (i % 60) * args.batch_size
        opt.zero_grad()
        loss_fn(model(x[j:j + args.batch_size]), y[j:j + args.batch_size]).backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    rate = args.steps * args.batch_size / (time.perf_counter() - start)
    print(f"torch {args.arch} bs={args.batch_size} samples_per_s {rate:.0f}")


if __name__ == "__main__":
    main()

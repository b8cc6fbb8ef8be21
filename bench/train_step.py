"""The peer of `bsce-torch bench-train`: the same ResNet-32 (PODNet's variant:
option-A shortcuts, no ReLU after residual sums, 64-d features, 100-way
linear head) training step in PyTorch on the same libtorch, random 32x32
inputs, SGD momentum 0.9, wd 5e-4. Prints images/s as JSON.
Usage: python bench/train_step.py BATCH ITERS"""
import json, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.down = stride != 1
    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        if self.down:
            x = x[:, :, ::2, ::2]
            x = torch.cat([x, torch.zeros_like(x)], 1)
        return y + x

class ResNet32(nn.Module):
    def __init__(self, classes=100, w=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, cin = [], w
        for stage, cout in enumerate([w, 2 * w, 4 * w]):
            for b in range(5):
                layers.append(Block(cin, cout, 2 if (b == 0 and stage > 0) else 1)); cin = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
    def forward(self, x):
        return self.fc(F.relu(self.blocks(self.stem(x))).mean((2, 3)))

def main():
    batch, iters = int(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = ResNet32().to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=dev); y = torch.randint(0, 100, (batch,), device=dev)
    def step():
        opt.zero_grad(); loss = F.cross_entropy(net(x), y); loss.backward(); opt.step(); return loss.item()
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    s = time.perf_counter() - t
    print(json.dumps({"images_per_s": batch * iters / s, "seconds": s, "threads": torch.get_num_threads()}))

main()

"""The peer of `bsce-torch bench-train`: the same training step in PyTorch on
the same libtorch, random inputs, 100-way linear head, cross-entropy, SGD
momentum 0.9, wd 5e-4, the loss read back every step. Prints images/s as
JSON.

  resnet32 (default): PODNet's CIFAR ResNet-32 (option-A shortcuts, no ReLU
      after residual sums, 64-d features), 32x32 inputs.
  resnet18: LUCIR's ImageNet ResNet-18 (torchvision's layout: 7x7 stride-2
      stem, max-pool, 1x1-conv shortcuts, no ReLU after the final block
      before pooling's ReLU), 224x224 inputs.

On a GPU, cuDNN's benchmark mode is on, as in bsce-torch (and in the
training stages unless `deterministic: true`).

Usage: python bench/train_step.py BATCH ITERS [--net resnet32|resnet18]
                                  [--device cpu|cuda|cuda:N] [--warmup N]"""
import argparse, json, time
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

class BlockB(nn.Module):
    """torchvision's BasicBlock; `relu` False for the network's last block."""
    def __init__(self, cin, cout, stride, relu):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())
        self.relu = relu
    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x)
        return F.relu(y) if self.relu else y

class ResNet18(nn.Module):
    def __init__(self, classes=100, w=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], w
        for stage in range(4):
            cout = w << stage
            for b in range(2):
                last = stage == 3 and b == 1
                layers.append(BlockB(cin, cout, 2 if (b == 0 and stage > 0) else 1, not last)); cin = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
    def forward(self, x):
        return self.fc(F.relu(self.blocks(self.stem(x))).mean((2, 3)))

NETS = {"resnet32": (ResNet32, 32), "resnet18": (ResNet18, 224)}

def main():
    ap = argparse.ArgumentParser(description="PyTorch peer of bsce-torch bench-train")
    ap.add_argument("batch", type=int); ap.add_argument("iters", type=int)
    ap.add_argument("--net", choices=sorted(NETS), default="resnet32")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cls, size = NETS[a.net]
    net = cls().to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, size, size, device=dev); y = torch.randint(0, 100, (a.batch,), device=dev)
    def step():
        opt.zero_grad(); loss = F.cross_entropy(net(x), y); loss.backward(); opt.step(); return loss.item()
    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    for _ in range(a.iters):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    s = time.perf_counter() - t
    print(json.dumps({"images_per_s": a.batch * a.iters / s, "seconds": s, "net": a.net, "image_size": size,
                      "batch": a.batch, "iters": a.iters, "warmup": a.warmup, "device": str(dev),
                      "cudnn_benchmark": dev.type == "cuda", "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))

main()

"""Run under ``torchrun --nproc-per-node 2``: each process trains the same small net on
its own batches through imgxfer's training recipe; afterwards every parameter and
BatchNorm buffer must be equal on both processes (gradients and statistics averaged),
and one averaged gradient must be the mean of the processes' gradients."""

import torch
import torch.distributed as dist

from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.nn.nets import SmallConvNet
from imgxfer.nn.training import train_supervised

torch.set_num_threads(1)
device = distributed.setup("cpu")
assert device is not None and distributed.world_size() == 2
torch.manual_seed(0)  # the same initial weights everywhere, as a run's seed gives
net = SmallConvNet(4, 16, 1, 0)
model = torch.nn.Sequential(net, torch.nn.Linear(net.feature_dim, 3))
images, labels = torch.rand(60, 1, 16, 16), torch.arange(60) % 3
train_supervised(model, net.preprocess, images, labels, budget=Budget(5), lr=1e-2,
                 batch_size=8, seed=0, generator=torch.Generator().manual_seed(1),
                 device=device)
for name, tensor in [*model.state_dict().items()]:
    if tensor.is_floating_point():
        gathered = [torch.empty_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor.contiguous())
        assert torch.equal(gathered[0], gathered[1]), f"{name} differs between processes"

p = torch.nn.Parameter(torch.zeros(2))
p.grad = torch.tensor([1.0, 3.0]) * (distributed.rank() + 1)  # rank 0: 1, 3; rank 1: 2, 6
distributed.average_gradients([p])
assert torch.equal(p.grad, torch.tensor([1.5, 4.5])), p.grad
print(f"rank {distributed.rank()} ok")

import copy

import torch

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.nn.training import channels_last_training, conv_layout


def test_channels_last_training_changes_layout_not_results():
    cpu = torch.device("cpu")
    model = torch.nn.Sequential(SmallCNN(width=4, input_size=16, seed=0), torch.nn.Linear(16, 3))
    other = copy.deepcopy(model)
    assert channels_last_training(other, cpu)
    conv = other[0].features[0][3].weight  # 4 -> 4 channels: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

    x = torch.rand(8, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    grads = []
    for net, batch in ((model, x), (other, conv_layout(x, True))):
        loss = torch.nn.functional.cross_entropy(net(batch), y)
        loss.backward()
        grads.append(net[0].features[0][0].weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_channels_last_training_leaves_non_conv_modules_alone():
    assert not channels_last_training(torch.nn.Linear(4, 2), torch.device("cpu"))
    x = torch.rand(2, 3)
    assert conv_layout(x, True) is x

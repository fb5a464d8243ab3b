import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny test models run fastest on one intra-op thread, and it avoids oversubscribing a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def randomize(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (zero-init adaLN/outputs would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="session")
def inception_weights():
    """Skip unless the TF Inception weights are installed (they come with `make setup`)."""
    from ppflow.eval.inception import InceptionWeightsError, find_weights

    try:
        find_weights()
    except InceptionWeightsError as e:
        pytest.skip(str(e))

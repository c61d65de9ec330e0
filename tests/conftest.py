import pytest
import torch

from clayflow.cli.main import main


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: small models train faster so, and do not slow down
    several-fold when the machine is busy (as ``clayflow train`` does for them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def good_run(tmp_path_factory):
    """A short run of the default model on moons (nsf); other families have their own runs."""
    run = tmp_path_factory.mktemp("cli") / "run"
    from test_cli import FAST

    assert main(["train", *FAST, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    from test_image_data import write_images

    folder = write_images(tmp_path_factory.mktemp("imgs") / "faces", 30, size=(8, 8))
    run = folder.parent / "run"
    argv = ["train", "--data", f"images:{folder}", "--steps", "12", "--hidden", "8", "--depth", "1"]
    assert main([*argv, "--batch-size", "8", "--eval-every", "6", "--out", str(run)]) == 0
    return run, folder

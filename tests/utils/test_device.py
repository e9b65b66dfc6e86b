"""Device choice: CPU by default, 'auto' follows torch, a missing GPU is a clear ConfigError."""
import pytest
import torch

from clipguard.errors import ConfigError
from clipguard.models import create_model
from clipguard.utils.device import resolve_device
from clipguard.utils.runrecord import RunRecord
from tests_helpers import no_gpu



def test_none_and_cpu_mean_cpu():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_follows_torch():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_missing_gpu_names_the_fix(name):
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu0", "mps"])
def test_unknown_or_unsupported_device(name):
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device(name)


def test_bundle_moves_and_reports_its_device():
    b = create_model("tiny-rn", device="cpu")
    assert b.device == torch.device("cpu")
    assert b.to(None) is b and b.device.type == "cpu"


def test_run_record_names_the_hardware():
    hw = RunRecord("x").data["hardware"]
    assert hw["cpu_count"] >= 1 and "machine" in hw
    assert ("gpu" in hw) == torch.cuda.is_available()

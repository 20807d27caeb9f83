"""Run provenance: the machine a figure was measured on."""
import os
import platform

import torch

from shortcut_policy import utils

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: Another CPU
"""


def test_cpu_model_reads_the_first_processor_with_its_family_and_model(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    assert utils.cpu_model(f) == "AMD EPYC (cpu family 23, model 1)"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\n")  # no numbers: the name alone
    assert utils.cpu_model(f) == "Some CPU 9000"


def test_cpu_model_without_cpuinfo_never_repeats_the_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: platform.machine())
    assert utils.cpu_model(tmp_path / "missing") == ""
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6 Model 85, GenuineIntel")
    assert utils.cpu_model(tmp_path / "missing") == "Intel64 Family 6 Model 85 GenuineIntel"  # no comma to split on


def test_machine_description_names_the_cpu_model_and_its_kernels(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(utils, "cpu_model", lambda: "Some CPU 9000")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    text = utils.machine_description()
    assert text.startswith(f"{os.cpu_count()}-core CPU (Some CPU 9000, {platform.machine()}, AVX512), ")
    assert f"torch {torch.__version__}" in text
    monkeypatch.setattr(utils, "cpu_model", lambda: "")  # a model the OS does not name: left out
    assert "(, " not in utils.machine_description()

"""Issue #29 case 13 (pickle): a weights file that needs pickled code is refused in one line that
says what it holds, without relaying torch's advice that weights_only=False "will likely succeed"."""

import json
import os

import pytest
import torch
from user_models import spec_dict

from batchforge.cli import main


class Planted:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but a global weights_only must refuse


@pytest.mark.parametrize("payload", ["global", "object"])
def test_a_pickled_weights_file_is_refused_without_the_unsafe_advice(tmp_path, capsys, payload):
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": Planted() if payload == "global" else object()}}, weights)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_dict()))
    out = tmp_path / "out"
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec), "--weights", str(weights),
                 "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{weights} could not be loaded with torch.load(weights_only=True): " in err
    refused = "GLOBAL posix.getcwd" if payload == "global" else "Unsupported global: GLOBAL object was not an allowed"
    assert refused in err
    assert "will likely succeed" not in err and "set to `False`" not in err and "add_safe_globals" not in err
    assert "batchforge never unpickles code, so it does not retry with weights_only=False" in err
    assert not out.exists() or list(out.iterdir()) == []

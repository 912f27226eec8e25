"""notebooks/image_batches.ipynb executed headless (nbclient + ipykernel) against the test
servers and worker, its outputs checked."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "image_batches.ipynb"


def test_the_image_batch_notebook_runs_and_its_outputs_are_right(worker):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits this process's environment: the test namespace's RASK_* variables.
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = []
    images = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            elif "data" in out:
                images += "image/png" in out["data"]
                text.append(out["data"].get("text/plain", ""))
    text = "".join(text)
    assert "batches=12 images=96 pixels=294912" in text
    assert "12 done, 0 failed" in text
    assert "brightness rises with the batch: True" in text
    assert "same summary: True" in text
    assert "released 24 results" in text
    assert images == 1

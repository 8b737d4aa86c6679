"""The one base of the errors a user can fix (bad params, missing or broken files, a diverged run):
the command line prints such an error as one line and exits 2, never as a traceback."""


class TcmError(Exception):
    """An error whose message names the file, key or value at fault and what to do."""


# The optional packages some commands import lazily, by import name, with the extra of pyproject.toml that
# installs them (tests/test_faults_inputs.py checks this table against pyproject.toml). A base install
# (`pip install -e .`) lacks them; the command line maps their ModuleNotFoundError to one line.
OPTIONAL_PACKAGES: dict[str, str] = {
    "dvc": "pipeline", "papermill": "pipeline", "ipykernel": "pipeline", "nbformat": "pipeline",
    "mlflow": "pipeline", "nbconvert": "pipeline", "jupyterlab": "pipeline", "ipywidgets": "pipeline",
    "seaborn": "pipeline", "submitit": "pipeline",
}


def missing_package_message(error: ModuleNotFoundError) -> str | None:
    """One line naming the optional package ``error`` is about and the extra that installs it; None when
    the missing module is not an optional package (a broken install, or a bug: keep its traceback)."""
    package = (error.name or "").split(".")[0]
    extra = OPTIONAL_PACKAGES.get(package)
    if extra is None:
        return None
    return (f"the optional package {package} is not installed, and this command needs it; install the "
            f"'{extra}' extra: pip install -e '.[{extra}]' (or pip install {package})")

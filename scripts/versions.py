"""Print the installed versions of the packages a failure most often depends on (one line; set-up and CI)."""

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate", "numpy")


def installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    print("versions: " + ", ".join(f"{name} {installed(name)}" for name in PACKAGES))

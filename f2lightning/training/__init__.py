from f2lightning.training.module import Florence2LitModule

__all__ = ["Florence2LitModule"]

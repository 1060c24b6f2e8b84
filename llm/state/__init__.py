"""What a training run's state is made of: parameters and optimizer state (`TrainState`), and the optimizers and
learning-rate schedules that update it (Optax)."""

from llm.state.optimizers import make_optimizer, param_groups, param_path
from llm.state.train_state import TrainState, abstract_train_state, boxed_abstract_train_state, create_train_state

__all__ = ["TrainState", "abstract_train_state", "boxed_abstract_train_state",
           "create_train_state", "make_optimizer", "param_groups", "param_path"]

"""Dreamer-style actor-critic in the cartpole-pixels world model, with TorchRL's own Dreamer losses.

The policy never sees the real env while it learns. It learns in imagination only: TorchRL's
``DreamerV3ActorLoss`` imagines ``horizon`` steps from real-frame starts through the world model
(``zoo.make_env("cartpole-pixels", differentiable=True, action="one_hot")``) and backpropagates
the lambda-returns through the imagined latents into the actor; ``DreamerV3ValueLoss`` regresses
the critic onto them. Then the reality check: the real ``CartPole-v1``, from pixels (render ->
preprocess -> ``model.observe`` posterior -> actor, greedy).

    python tutorials/cartpole_pixels_dreamer.py                  # the real budget (minutes on 1 CPU core)
    python tutorials/cartpole_pixels_dreamer.py --budget tiny    # smoke run (seconds; used by the tests)

How the pieces fit TorchRL's losses (all keys are the losses' defaults but one):

* the latent ``{"deter", "stoch"}`` lives under the root key ``"state"`` (``state_key="state"``),
  and ``actor_loss.set_keys(belief="state")``: the loss selects ``("state", "state")``, the whole
  latent, and resets the env from it;
* actor and critic read ``"observation"``, the latent features ``cat(deter, stoch)``;
* the continue head: the env reports ``("next", "continue_prob")`` (with its graph); the loss's
  ``continuation_model`` is a rename of that key to the loss's ``"continuation"`` (at the root,
  after a reset, it is 1: a real-frame start is no end), so the returns and the loss weights are
  discounted by P(continue) as in DreamerV3;
* discrete actions with gradients: a one-hot straight-through sample (TorchRL's
  ``OneHotCategorical`` with ``grad_method=PassThrough``). Its base class says it has no
  ``rsample``, so tensordict's sampler would never call the straight-through one: the subclass
  below says it has.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, OneHotCategorical
from torchrl.objectives import DreamerV3ActorLoss, DreamerV3ValueLoss
from torchrl.objectives.utils import ValueEstimators

from torchwm_rl import zoo

# real frames -> start latents, and the reality check from pixels (tutorials/cartpole_pixels_common.py)
from cartpole_pixels_common import real_episodes, real_returns, real_start_latents

# The loss resets the env with `env.reset(td)` (TorchRL's implicit set_state, which the env honours:
# imagination starts from td["state"]); TorchRL announces that v0.15 will need set_state=True there.
warnings.filterwarnings("ignore", message="A reset tensordict carrying state", category=FutureWarning)

BUDGETS = {  # name -> sizes of the run
    # real_episodes: random-action episodes for the first starts; every `round_every` updates,
    # `round_episodes` more real episodes with the current actor (at most `round_steps` steps) add
    # theirs: the states the policy reaches (Dreamer's data loop, with the world model kept fixed)
    "tiny": dict(real_episodes=2, updates=4, batch=16, horizon=5, eval_episodes=1, log_every=2,
                 round_every=2, round_episodes=1, round_steps=10),
    "full": dict(real_episodes=30, updates=1200, batch=128, horizon=15, eval_episodes=20, log_every=100,
                 round_every=300, round_episodes=5, round_steps=200),
}


class StraightThroughOneHot(OneHotCategorical):
    """TorchRL's one-hot categorical, sampled straight-through (``one_hot + p - p.detach()``).

    ``torch.distributions.Categorical.has_rsample`` is False, so tensordict's sampler calls
    ``sample()`` (integer one-hots, no gradient) and never TorchRL's ``rsample``; this says it
    has one (the only change)."""

    has_rsample = True


def make_actor_value(feature_size: int, hidden: int = 128) -> tuple[ProbabilisticTensorDictSequential, TensorDictModule]:
    """The actor (features -> one-hot action, straight-through) and the critic (features -> value)."""
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(MLP(in_features=feature_size, out_features=2, depth=2, num_cells=hidden, activation_class=nn.ELU),
                         in_keys=["observation"], out_keys=["logits"]),
        ProbabilisticTensorDictModule(in_keys=["logits"], out_keys=["action"], distribution_class=StraightThroughOneHot,
                                      default_interaction_type=InteractionType.RANDOM),
    )
    value = TensorDictModule(MLP(in_features=feature_size, out_features=1, depth=2, num_cells=hidden,
                                 activation_class=nn.ELU), in_keys=["observation"], out_keys=["state_value"])
    return actor, value


def make_losses(env, actor, value, horizon: int, reinforce: bool = False) -> tuple[DreamerV3ActorLoss, DreamerV3ValueLoss]:
    """TorchRL's DreamerV3 actor and value losses over ``env`` (see the module docs for the keys).

    ``reinforce=False``: the actor's gradient is the lambda-return's, backpropagated through the
    imagined latents (straight-through actions); ``True``: DreamerV3's discrete-action default,
    REINFORCE with the critic as baseline (the rollout still imagines from the same starts)."""
    continuation = TensorDictModule(nn.Identity(), in_keys=["continue_prob"], out_keys=["continuation"])
    actor_loss = DreamerV3ActorLoss(actor, value, env, continuation_model=continuation, imagination_horizon=horizon,
                                    use_reinforce=reinforce)
    actor_loss.set_keys(belief="state")  # the whole latent lives under "state"
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=0.95)
    value_loss = DreamerV3ValueLoss(value, actor_loss=actor_loss)  # the actor's gamma, read each call
    return actor_loss, value_loss


def greedy(actor, model):
    """``act(latent, frame)`` for :func:`real_returns`: the actor's most likely action on the features."""
    logits_net = actor.module[0].module

    def act(latent, frame):
        return int(logits_net(model.features(latent))[0].argmax())

    return act


def sampled(actor, model):
    """``act(latent, frame)``: an action drawn from the actor (collecting real starts)."""
    logits_net = actor.module[0].module

    def act(latent, frame):
        return int(torch.distributions.Categorical(logits=logits_net(model.features(latent))[0]).sample())

    return act


def encoded_starts(model, episodes: int, seed: int, act=None, max_steps: int = 500) -> TensorDict:
    """Posterior latents (4 frames of burn-in) of every frame of ``episodes`` real episodes, one
    episode at a time (a 500-frame episode is 360 MB of raw frames)."""
    return torch.cat([real_start_latents(model, real_episodes(1, seed + i, max_steps, model, act))
                      for i in range(episodes)])


def train(budget: str, seed: int, reinforce: bool = False) -> dict:
    b = BUDGETS[budget]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = zoo.load("cartpole-pixels")
    # 1. real-frame starts: posterior latents (4 frames of burn-in) of every frame of real episodes
    starts = encoded_starts(model, b["real_episodes"], seed + 1_000)
    # 2. the differentiable imagined env over them (its batch size is unused: the loss resets it
    #    with each batch of starts)
    env = zoo.make_env("cartpole-pixels", model=model, batch_size=b["batch"], seed=seed, differentiable=True,
                       action="one_hot", state_key="state", start_latents=starts)
    actor, value = make_actor_value(model.feature_size)
    actor_loss, value_loss = make_losses(env, actor, value, b["horizon"], reinforce)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4, eps=1e-5)
    value_opt = torch.optim.Adam(value_loss.parameters(), lr=3e-4, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for update in range(1, b["updates"] + 1):
        if update % b["round_every"] == 0:  # the actor's own real episodes add their starts
            more = encoded_starts(model, b["round_episodes"], seed + 2_000 + 100 * update, sampled(actor, model),
                                  b["round_steps"])
            starts = torch.cat([starts, more])
        rows = torch.randint(len(starts), (b["batch"],), generator=gen)
        batch = TensorDict({"state": starts[rows]}, [b["batch"]])
        losses, fake = actor_loss(batch)
        actor_opt.zero_grad()
        losses["loss_actor"].backward()
        nn.utils.clip_grad_norm_(actor.parameters(), 100.0)
        actor_opt.step()
        vloss, _ = value_loss(fake)
        value_opt.zero_grad()
        vloss["loss_value"].backward()
        nn.utils.clip_grad_norm_(value_loss.parameters(), 100.0)
        value_opt.step()
        if update % b["log_every"] == 0 or update == b["updates"]:
            # the imagined return over the horizon: each step's reward weighted by P(not ended before it)
            alive = fake["next", "continue_prob"].cumprod(-2)
            before = torch.cat([torch.ones_like(alive[:, :1]), alive[:, :-1]], -2)
            imagined = float((fake["next", "reward"] * before).sum(-2).mean())
            curve.append((update, imagined))
            print(f"update {update:5d}/{b['updates']}  imagined return over {b['horizon']} steps {imagined:6.2f}  "
                  f"P(alive at {b['horizon']}) {float(alive[:, -1].mean()):.3f}  "
                  f"value loss {float(vloss['loss_value'].detach()):.4f}  {time.perf_counter() - t0:6.1f} s", flush=True)
    train_seconds = time.perf_counter() - t0
    # 3. the reality check from pixels, 20 episodes (seed 0 -> real seeds 20_000 ..)
    real, ends = real_returns(model, greedy(actor, model), b["eval_episodes"], seed=seed + 20_000)
    return {"tutorial": "cartpole_pixels_dreamer", "budget": budget, "seed": seed, "reinforce": reinforce,
            "starts": len(starts),
            "train_seconds": round(train_seconds, 1), "curve": curve, "real_mean_return": float(np.mean(real)),
            "real_returns": real, "real_ends": ends, "wall_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reinforce", action="store_true",
                        help="REINFORCE actor gradients (DreamerV3's discrete default) instead of backprop through the model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = train(args.budget, args.seed, args.reinforce)
    print(f"real return from pixels over {len(result['real_returns'])} episodes: {result['real_mean_return']:.1f} "
          f"(ends: {', '.join(sorted(set(result['real_ends'])))})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

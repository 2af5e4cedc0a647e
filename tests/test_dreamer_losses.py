"""TorchRL's Dreamer actor and value losses on the cartpole-pixels env (issue 22, item 5).

``zoo.make_env("cartpole-pixels", differentiable=True, action="one_hot", state_key="state")``
imagines with the autograd graph kept (the stochastic draw reparameterised), from real-frame
starts (``encode_frames``). TorchRL's ``DreamerV3ActorLoss`` / ``DreamerValueLoss`` run on it as
they are: gradients reach the actor through the imagined latents and none reach the world model;
the imagined steps are the model's own from the states given; the continuation weights are the
continue head's. The default env (``differentiable=False``) builds no graph.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential
from tensordict.nn import TensorDictModule
from torch import nn

pytest.importorskip("pygame")

from torchrl.modules import MLP, OneHotCategorical  # noqa: E402
from torchrl.objectives import DreamerActorLoss, DreamerV3ActorLoss, DreamerV3ValueLoss, DreamerValueLoss  # noqa: E402
from torchrl.objectives.utils import ValueEstimators  # noqa: E402

from torchwm_rl import zoo  # noqa: E402
from torchwm_rl.latent import encode_frames  # noqa: E402
from torchwm_rl.zoo import cartpole_pixels as C  # noqa: E402

# the loss resets with a plain env.reset(td) (TorchRL's implicit set_state): its v0.15 notice
pytestmark = pytest.mark.filterwarnings("ignore:A reset tensordict carrying state:FutureWarning")


class StraightThroughOneHot(OneHotCategorical):
    has_rsample = True  # Categorical says False, so tensordict would never call TorchRL's straight-through rsample


@pytest.fixture(scope="module")
def model():
    return zoo.load("cartpole-pixels")


@pytest.fixture(scope="module")
def real_starts(model):
    """Posterior latents of 6 real frame sequences (4 frames each, burn-in 3), batch [6]."""
    C.render_frames_headless()
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    frames, actions = [], []
    for i in range(6):
        env.reset(seed=300 + i)
        seq, acts = [env.render()], []
        for t in range(3):
            env.step((i + t) % 2)
            seq.append(env.render())
            acts.append((i + t) % 2)
        frames.append(np.stack(seq))
        actions.append(acts)
    env.close()
    return encode_frames(model, np.stack(frames), torch.tensor(actions), burn_in=3)


def make_env(model, **kw):
    kw = {"batch_size": 4, "seed": 0, "differentiable": True, "action": "one_hot", "state_key": "state", **kw}
    return zoo.make_env("cartpole-pixels", model=model, **kw)


def parts(env, horizon=6, v3=True, **loss_kw):
    torch.manual_seed(3)
    width = env.world_model.feature_size
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(MLP(in_features=width, out_features=2, depth=1, num_cells=32), in_keys=["observation"],
                         out_keys=["logits"]),
        ProbabilisticTensorDictModule(in_keys=["logits"], out_keys=["action"], distribution_class=StraightThroughOneHot,
                                      default_interaction_type=InteractionType.RANDOM),
    )
    value = TensorDictModule(MLP(in_features=width, out_features=1, depth=1, num_cells=32), in_keys=["observation"],
                             out_keys=["state_value"])
    if v3:
        continuation = TensorDictModule(nn.Identity(), in_keys=["continue_prob"], out_keys=["continuation"])
        loss = DreamerV3ActorLoss(actor, value, env, continuation_model=continuation, imagination_horizon=horizon,
                                  **loss_kw)
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=0.95)
        value_loss = DreamerV3ValueLoss(value, actor_loss=loss)
    else:
        loss = DreamerActorLoss(actor, value, env, imagination_horizon=horizon)
        value_loss = DreamerValueLoss(value)
    loss.set_keys(belief="state")  # the whole latent {"deter", "stoch"} lives under "state"
    return actor, value, loss, value_loss


@pytest.mark.parametrize("v3", [True, False], ids=["DreamerV3", "Dreamer"])
def test_actor_gradients_flow_through_the_imagined_latents_and_none_into_the_model(model, real_starts, v3):
    """No entropy bonus, no REINFORCE: the only path from the actor's parameters to the loss is
    its straight-through actions -> the model's imagined latents -> rewards, continue
    probabilities and values. The world model's parameters (made trainable here, so only
    ``hold_out_net(env)`` keeps them out) get no gradient and the actor's optimizer leaves them
    unchanged. Fails before: make_env's hooks ran under no_grad (and it took no
    ``differentiable``)."""
    env = make_env(model)
    env.world_model.requires_grad_(True)
    try:
        kw = {"entropy_bonus": 0.0} if v3 else {}
        actor, value, loss, _ = parts(env, v3=v3, **kw)
        world_before = [p.detach().clone() for p in env.world_model.parameters()]
        opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
        losses, fake = loss(TensorDict({"state": real_starts}, [6]))
        assert fake.batch_size == (6, 6) and losses["loss_actor"].requires_grad
        opt.zero_grad()
        losses["loss_actor"].backward()
        grads = [p.grad for p in actor.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert all(g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in env.world_model.parameters())
        assert all(p.requires_grad for p in env.world_model.parameters())  # hold_out_net released them
        before = [p.detach().clone() for p in actor.parameters()]
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(world_before, env.world_model.parameters()))
        assert not all(torch.equal(a, b) for a, b in zip(before, actor.parameters()))
    finally:
        env.world_model.requires_grad_(False)


def test_imagination_starts_from_real_frame_latents_and_steps_the_states_given(model, real_starts):
    """With the prior mean (``sample=False``) every imagined step is checkable: the first state is
    the encoded real-frame latent, each step's next state is ``model.imagine`` of the state it was
    given (and becomes the next step's state: no stale or wrong stochastic state fed), and the
    reward and continue probability are the heads' on it."""
    env = make_env(model, sample=False)
    _, _, loss, _ = parts(env, horizon=5)
    _, fake = loss(TensorDict({"state": real_starts}, [6]))
    for key in ("deter", "stoch"):
        torch.testing.assert_close(fake["state", key][:, 0], real_starts[key])
    with torch.no_grad():
        for t in range(5):
            state = fake["state"][:, t]
            nxt = model.imagine(state, fake["action"][:, t])
            for key in ("deter", "stoch"):
                torch.testing.assert_close(fake["next", "state", key][:, t], nxt[key])
                if t < 4:
                    torch.testing.assert_close(fake["state", key][:, t + 1], nxt[key])
            torch.testing.assert_close(fake["next", "reward"][:, t, 0], model.reward(nxt))
            torch.testing.assert_close(fake["next", "continue_prob"][:, t, 0], model.continue_prob(nxt))
            torch.testing.assert_close(fake["next", "observation"][:, t], model.features(nxt))
    # straight-through one-hots: one-hot up to float rounding
    hard = fake["action"].round()
    assert torch.allclose(fake["action"], hard, atol=1e-6) and (hard.sum(-1) == 1).all()


def test_continuation_weights_are_the_continue_head(model, real_starts):
    """``continuation_model`` renames the env's ``continue_prob``: after the step it is the head's
    probability, at the root of the first step 1 (a real-frame start continues), and the loss's
    weights are the cumulative product gamma^t * prod(continuation)."""
    env = make_env(model)
    _, _, loss, _ = parts(env, horizon=4)
    _, fake = loss(TensorDict({"state": real_starts}, [6]))
    torch.testing.assert_close(fake["next", "continuation"], fake["next", "continue_prob"])
    assert (fake["continuation"][:, 0] == 1).all()
    torch.testing.assert_close(fake["continuation"][:, 1:], fake["next", "continue_prob"][:, :-1])
    c = fake["continuation"][..., 0]
    expected = torch.cat([c[:, :1], 0.99 * c[:, 1:]], 1).cumprod(1)
    torch.testing.assert_close(fake["discount_weight"][..., 0], expected)
    assert (fake["next", "continue_prob"] < 1).any()  # the head's own values, not a constant


def test_value_loss_decreases_on_a_fixed_imagined_batch(model, real_starts):
    """DreamerV3ValueLoss regresses the critic onto the actor loss's lambda-returns: on one fixed
    imagined batch, 30 Adam steps cut the loss at least in half."""
    env = make_env(model)
    _, _, loss, value_loss = parts(env, horizon=6)
    _, fake = loss(TensorDict({"state": real_starts}, [6]))
    opt = torch.optim.Adam(value_loss.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        out, _ = value_loss(fake)
        opt.zero_grad()
        out["loss_value"].backward()
        opt.step()
        history.append(float(out["loss_value"].detach()))
    assert history[-1] < 0.5 * history[0], history


def test_the_default_env_builds_no_graph(model, real_starts):
    """``differentiable=False`` (the default) keeps the hooks under no_grad: an action that needs
    grad gives a step output with no graph (nothing to pay for it)."""
    env = make_env(model, differentiable=False)
    td = env.reset(TensorDict({"state": real_starts[:4]}, [4]), set_state=True)
    action = torch.tensor([[1.0, 0.0]] * 4, requires_grad=True)
    out = env.step(td.set("action", action))["next"]
    for key in ("reward", "continue_prob", "observation"):
        assert not out[key].requires_grad, key
    grad_env = make_env(model)
    out = grad_env.step(grad_env.reset(TensorDict({"state": real_starts[:4]}, [4]), set_state=True)
                        .set("action", action))["next"]
    for key in ("reward", "continue_prob", "observation"):
        assert out[key].requires_grad, key
    (out["reward"].sum() + out["continue_prob"].sum()).backward()
    assert action.grad is not None and action.grad.abs().sum() > 0


def test_a_differentiable_env_keeps_the_callers_no_grad(model, real_starts):
    """``differentiable=True`` keeps a graph only where grad is enabled: under the caller's
    ``torch.no_grad()`` (an evaluation; the Gymnasium/SB3 exports step so) there is none. Fails
    with the hooks under ``torch.enable_grad()`` (a graph leaking into a no_grad evaluation)."""
    env = make_env(model)
    td = env.reset(TensorDict({"state": real_starts[:4]}, [4]), set_state=True)
    action = torch.tensor([[1.0, 0.0]] * 4, requires_grad=True)
    env.world_model.requires_grad_(True)  # a model being trained: a graph source besides the action
    try:
        with torch.no_grad():
            out = env.step(td.clone().set("action", action))["next"]
        for key in ("reward", "continue_prob", "observation"):
            assert not out[key].requires_grad, key
        assert not any(v.requires_grad for v in out["state"].values())
        assert env.step(td.clone().set("action", action))["next", "reward"].requires_grad  # grad enabled: a graph
    finally:
        env.world_model.requires_grad_(False)


def test_the_stochastic_draw_is_reparameterised_with_the_envs_generator(model, real_starts):
    """The sampled latent is ``prior mean + std * noise`` with the noise from the env's seeded
    generator: the same seed gives the same draw, and the draw's gradient wrt the action is the
    prior mean's plus the std's times the noise (non-zero: the sample is not cut from the graph)."""
    start = TensorDict({"state": real_starts[:4]}, [4])
    action = torch.tensor([[0.0, 1.0]] * 4, requires_grad=True)
    draws = []
    for _ in range(2):
        env = make_env(model, seed=7)
        draws.append(env.step(env.reset(start.clone(), set_state=True).set("action", action))["next", "state", "stoch"])
    torch.testing.assert_close(draws[0], draws[1])
    mean = make_env(model, sample=False).step(
        make_env(model, sample=False).reset(start.clone(), set_state=True).set("action", action))["next", "state", "stoch"]
    assert not torch.allclose(draws[0], mean)  # sampled, not the mean
    grad, = torch.autograd.grad(draws[0].sum(), action)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [[0.3, 0.7], [1.0, 1.0], [0.0, 0.0], [2.0, -1.0]])
def test_a_one_hot_action_that_is_not_one_hot_is_refused(model, real_starts, bad):
    env = make_env(model)
    td = env.reset(TensorDict({"state": real_starts[:4]}, [4]), set_state=True)
    action = torch.tensor([[1.0, 0.0], bad, [0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"action='one_hot'.*one-hot.*row\(s\) \[1\]"):
        env.step(td.set("action", action))


def test_a_straight_through_sample_is_accepted_with_its_rounding(model, real_starts):
    """``one_hot + p - p.detach()`` is one-hot only up to float rounding: accepted, its graph kept."""
    env = make_env(model)
    td = env.reset(TensorDict({"state": real_starts[:4]}, [4]), set_state=True)
    logits = torch.randn(4, 2, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        action = StraightThroughOneHot(logits=logits).rsample()
    out = env.step(td.set("action", action))["next"]
    out["reward"].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_make_env_refuses_an_unknown_action_form(model):
    with pytest.raises(ValueError, match=r"action must be one of \('index', 'one_hot'\); got 'onehot'"):
        zoo.make_env("cartpole-pixels", model=model, action="onehot")

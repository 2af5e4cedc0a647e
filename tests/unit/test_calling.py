"""Unit tests of ``torchwm_rl.calling`` (the hook contract), table-driven, no env built.

Binding (one row per signature: what each parameter receives, or the refusal), including every
tricky signature found when porting TorchWM code; how a binding is shown; what a bound
:class:`~torchwm_rl.calling.Hook` passes when called; and the accepted forms an error names.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

from torchwm_rl.calling import CONTRACT, Hook, accepted_forms, bind

# ----------------------------------------------------------------------------- binding table
# (hook, callable, on_model, expected positional arguments, expected keyword arguments)
BINDS = [
    # TorchWM's positional rule: any leading part of the list
    ("reward_fn", lambda model, next_state, obs, action: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, state, obs, action: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, state: 0, False, ("model", "next_state"), {}),
    ("reward_fn", lambda self, s: 0, False, ("model", "next_state"), {}),
    ("reward_fn", lambda mdl, st, ob, ac: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda *args: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, *rest: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("terminal_fn", lambda model, next_state: 0, False, ("model", "next_state"), {}),
    ("transition_fn", lambda model, state, action: 0, False, ("model", "state", "action"), {}),
    ("transition_fn", lambda model, state, action, deterministic=True: 0, False, ("model", "state", "action"), {}),
    ("reset_fn", lambda model, seed=None, options=None: 0, False, ("model", "seed", "options"), {}),
    ("reset_fn", lambda model, seed, options: 0, False, ("model", "seed", "options"), {}),
    ("reset_fn", lambda: 0, False, (), {}),
    ("render_fn", lambda model, state, obs: 0, False, ("model", "state", "obs"), {}),
    ("render_fn", lambda model, state: 0, False, ("model", "state"), {}),
    ("action_transform_fn", lambda model, action: 0, False, ("model", "action"), {}),
    # names decide where they contradict the positions
    ("reward_fn", lambda state, act: 0, False, (), {"state": "next_state", "act": "action"}),
    ("reward_fn", lambda next_state, action: 0, False, (), {"next_state": "next_state", "action": "action"}),
    ("reward_fn", lambda model, state, action: 0, False, (), {"model": "model", "state": "next_state", "action": "action"}),
    ("reward_fn", lambda s: 0, False, (), {"s": "next_state"}),
    ("terminal_fn", lambda obs, action: 0, False, (), {"obs": "obs", "action": "action"}),
    ("transition_fn", lambda s, a=None: 0, False, (), {"s": "state", "a": "action"}),
    ("transition_fn", lambda state, action: 0, False, (), {"state": "state", "action": "action"}),
    ("transition_fn", lambda action, state: 0, False, (), {"action": "action", "state": "state"}),
    ("reset_fn", lambda seed=None, options=None: 0, False, (), {"seed": "seed", "options": "options"}),
    ("action_transform_fn", lambda a: 0, False, (), {"a": "action"}),
    # extra inputs, by name only
    ("reward_fn", lambda model, next_state, prev_state: 0, False, (),
     {"model": "model", "next_state": "next_state", "prev_state": "prev_state"}),
    ("reward_fn", lambda prev_state, action, next_state: 0, False, (),
     {"prev_state": "prev_state", "action": "action", "next_state": "next_state"}),
    ("reward_fn", lambda model, next_state, *, generator: 0, False, ("model", "next_state"), {"generator": "generator"}),
    ("reset_fn", lambda model, seed=None, options=None, batch_size=(): 0, False, ("model", "seed", "options"),
     {"batch_size": "batch_size"}),
    ("reset_fn", lambda model, batch_size, reset_mask: 0, False, (),
     {"model": "model", "batch_size": "batch_size", "reset_mask": "reset_mask"}),
    # methods of the model: the list without the model (TorchWM)
    ("transition_fn", lambda state, action: 0, True, ("state", "action"), {}),
    ("transition_fn", lambda x, u: 0, True, ("state", "action"), {}),
    ("transition_fn", lambda action: 0, True, ("action",), {}),
    ("transition_fn", lambda x: 0, True, ("action",), {}),
    ("reset_fn", lambda seed=None, options=None: 0, True, ("seed", "options"), {}),
    ("reset_fn", lambda: 0, True, (), {}),
    # positional-only parameters: TorchWM's rule, or names decide (positionally, in order)
    ("reward_fn", lambda model, next_state, /: 0, False, ("model", "next_state"), {}),
    ("transition_fn", lambda state, action, /: 0, False, ("state", "action"), {}),
    # a parameter of unknown name with a default keeps its default when names decide
    ("transition_fn", lambda state, action, noise=0.0: 0, False, (), {"state": "state", "action": "action"}),
    # an extra input after TorchWM's full list, by name
    ("reward_fn", lambda model, next_state, obs, action, prev_state: 0, False,
     ("model", "next_state", "obs", "action"), {"prev_state": "prev_state"}),
    ("transition_fn", lambda model, state, action, generator: 0, False,
     ("model", "state", "action"), {"generator": "generator"}),
    ("transition_fn", lambda model, state, action, rng=None: 0, False,
     ("model", "state", "action"), {"rng": "generator"}),
    # *args with named parameters before it that agree with their positions
    ("transition_fn", lambda model, state, *rest: 0, False, ("model", "state", "action"), {}),
    ("reset_fn", lambda *args, generator: 0, False, ("model", "seed", "options"), {"generator": "generator"}),
    # keyword-only parameters with a default and an unknown name are left alone
    ("reward_fn", lambda model, next_state, *, scale=2.0: 0, False, ("model", "next_state"), {}),
    # aliases
    ("reward_fn", lambda world_model, latent, observation, u: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda wm, next_obs: 0, False, (), {"wm": "model", "next_obs": "obs"}),
    ("decode_fn", lambda model, z: 0, False, ("model", "state"), {}),
    ("render_fn", lambda state, obs: 0, True, ("state", "obs"), {}),
    ("action_transform_fn", lambda action: 0, True, ("action",), {}),
]


@pytest.mark.parametrize("hook,fn,on_model,positional,keywords", BINDS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(BINDS)])
def test_binding(hook, fn, on_model, positional, keywords):
    binding = bind(fn, hook, on_model=on_model)
    assert binding.positional == positional
    assert dict(binding.keywords) == keywords


# (hook, callable, on_model, a fragment of the TypeError)
REFUSED = [
    # the old full list (model, state, action, next_state): two parameters name the state reached
    ("reward_fn", lambda model, state, action, next_state: 0, False, "two parameters name 'next_state'"),
    ("terminal_fn", lambda state, action, next_state: 0, False, "two parameters name 'next_state'"),
    # a name contradicting its position beside one that names nothing
    ("reward_fn", lambda state, foo: 0, False, "parameter 'foo' is not the name of any argument"),
    ("reward_fn", lambda m, s, a, n: 0, False, "parameter 'n' is not the name of any argument"),
    # a required parameter with no argument left
    ("transition_fn", lambda model, state, action, extra: 0, False, "parameter 'extra' has no argument left"),
    ("action_transform_fn", lambda model, action, extra: 0, False, "parameter 'extra' has no argument left"),
    # *args after a contradicting name
    ("transition_fn", lambda action, *rest: 0, False, "parameter 'action' would receive 'model'"),
    # a required keyword-only parameter nobody provides
    ("reward_fn", lambda model, next_state, *, scale: 0, False, "keyword-only parameter 'scale'"),
    # an extra that is not for this hook
    ("transition_fn", lambda state, action, prev_state: 0, False, "parameter 'prev_state' is not the name of any argument"),
    # a positional-only parameter after one left to its default cannot be bound by name
    ("transition_fn", lambda x=None, a=None, /: 0, False, "positional-only parameter 'a' follows a parameter left"),
    # an extra input cannot be given positionally
    ("reward_fn", lambda model, next_state, obs, action, prev_state, /: 0, False,
     "parameter 'prev_state' has no argument left"),
    # *args: a named parameter beyond the list
    ("reward_fn", lambda m, s, o, a, extra, *rest: 0, False, "parameter 'extra' comes after the 4 arguments"),
    # a keyword-only parameter naming an argument a positional one already gets
    ("reward_fn", lambda model, next_state, *, state: 0, False, "two parameters name 'next_state'"),
    # on the model, the list has no model: a third parameter has nothing left
    ("transition_fn", lambda state, action, extra: 0, True, "parameter 'extra' has no argument left for it (the list has 2)"),
    # batch_size is an input of reset hooks only
    ("transition_fn", lambda model, state, action, *, batch_size: 0, False, "keyword-only parameter 'batch_size'"),
]


@pytest.mark.parametrize("hook,fn,on_model,fragment", REFUSED, ids=[f"{row[0]}-{i}" for i, row in enumerate(REFUSED)])
def test_ambiguous_signatures_are_refused_at_construction(hook, fn, on_model, fragment):
    with pytest.raises(TypeError, match=re.escape(fragment)) as err:
        bind(fn, hook, on_model=on_model)
    assert str(err.value).startswith(f"{hook}: cannot bind")
    assert f"Accepted: {accepted_forms(hook, on_model)}." in str(err.value)


def test_partial_and_nn_module_hooks_bind_from_their_real_signature():
    def reward(scale, model, next_state):
        return scale * next_state.sum()

    binding = bind(functools.partial(reward, 2.0), "reward_fn")
    assert binding.positional == ("model", "next_state")

    class Head(torch.nn.Module):
        def forward(self, next_state, action):
            return next_state.sum(-1)

    binding = bind(Head(), "reward_fn")
    assert dict(binding.keywords) == {"next_state": "next_state", "action": "action"}


def test_the_state_reached_hint_names_prev_state():
    with pytest.raises(TypeError, match=re.escape("two parameters name 'next_state' (the state before the step is `prev_state`)")):
        bind(lambda model, state, action, next_state: 0, "reward_fn")


def test_a_label_replaces_the_hook_name_in_errors_and_bindings():
    binding = bind(lambda model, state: 0, "reward_fn", label="model.reward")
    assert binding.hook == "model.reward" and binding.describe().startswith("model.reward = ")
    with pytest.raises(TypeError, match=r"^model\.reward: cannot bind"):
        bind(lambda state, foo: 0, "reward_fn", label="model.reward")


def test_an_unreadable_signature_gets_every_argument():
    # builtins without a signature: TorchWM passes every argument
    binding = bind(max, "reward_fn")
    assert binding.positional == ("model", "next_state", "obs", "action") and binding.keywords == ()
    assert binding.rule == "all arguments (signature unreadable)"


def reward(model, s):
    return 0


# (hook, callable, describe())
DESCRIBED = [
    ("reward_fn", reward, "reward_fn = reward(model<-model, s<-next_state) [positional (TorchWM)]"),
    ("reward_fn", lambda state, act: 0, "reward_fn = <lambda>(state<-next_state, act<-action) [by name]"),
    ("reward_fn", lambda *args: 0,
     "reward_fn = <lambda>(*0<-model, *1<-next_state, *2<-obs, *3<-action) [all arguments (*args)]"),
    ("reset_fn", lambda model, seed=None, options=None, *, generator: 0,
     "reset_fn = <lambda>(model<-model, seed<-seed, options<-options, generator<-generator) [positional (TorchWM)]"),
    ("reset_fn", lambda: 0, "reset_fn = <lambda>() [positional (TorchWM)]"),
]


@pytest.mark.parametrize("hook,fn,text", DESCRIBED, ids=[row[2].split(" [")[1][:-1] + f"-{i}" for i, row in enumerate(DESCRIBED)])
def test_describe(hook, fn, text):
    assert bind(fn, hook).describe() == text


VALUES = {"model": "M", "state": "S", "next_state": "S1", "prev_state": "S0", "obs": "O", "action": "A",
          "seed": 7, "options": {}, "batch_size": (2,), "reset_mask": "R", "generator": "G"}

# (hook, callable returning what it received, on_model, what it receives from VALUES)
CALLS = [
    ("reward_fn", lambda model, s: (model, s), False, ("M", "S1")),
    ("reward_fn", lambda model, next_state, obs, action: (model, next_state, obs, action), False, ("M", "S1", "O", "A")),
    ("reward_fn", lambda state, act: (state, act), False, ("S1", "A")),
    ("reward_fn", lambda act, state: (act, state), False, ("A", "S1")),
    ("reward_fn", lambda prev_state, next_state: (prev_state, next_state), False, ("S0", "S1")),
    ("terminal_fn", lambda *args: args, False, ("M", "S1", "O", "A")),
    ("transition_fn", lambda model, state, action, *, generator: (model, state, action, generator), False,
     ("M", "S", "A", "G")),
    ("transition_fn", lambda action: action, True, "A"),
    ("transition_fn", lambda s, a=None: (s, a), False, ("S", "A")),
    ("reset_fn", lambda model, seed=None, options=None, batch_size=(): (model, seed, options, batch_size), False,
     ("M", 7, {}, (2,))),
    ("reset_fn", lambda: "fresh", False, "fresh"),
    ("render_fn", lambda model, state, obs: (model, state, obs), False, ("M", "S", "O")),
    ("action_transform_fn", lambda a: a, False, "A"),
]


@pytest.mark.parametrize("hook,fn,on_model,received", CALLS, ids=[f"{row[0]}-{i}" for i, row in enumerate(CALLS)])
def test_a_bound_hook_passes_the_arguments_it_asked_for(hook, fn, on_model, received):
    bound = Hook(fn, hook, on_model=on_model)
    assert bound(VALUES) == received
    args, kwargs = bound.binding.args(VALUES)  # the same call, as Binding.args spells it
    assert fn(*args, **kwargs) == received


# (hook, callable, the arguments the hook asks for)
WANTS = [
    ("reward_fn", lambda model, next_state: 0, {"model", "next_state"}),
    ("reward_fn", lambda next_state, *, prev_state: 0, {"next_state", "prev_state"}),
    ("reward_fn", lambda *args: 0, {"model", "next_state", "obs", "action"}),
    ("transition_fn", lambda model, state, action, *, generator: 0, {"model", "state", "action", "generator"}),
    ("reset_fn", lambda: 0, set()),
]


@pytest.mark.parametrize("hook,fn,wants", WANTS, ids=[f"{row[0]}-{i}" for i, row in enumerate(WANTS)])
def test_wants_lists_every_argument_received(hook, fn, wants):
    assert Hook(fn, hook).wants == frozenset(wants)


# (hook, on_model, start of the accepted forms, the inputs it also takes by name or None)
FORMS = [
    ("reward_fn", False, "reward_fn(model, next_state, obs, action), any leading part of it", "prev_state, generator"),
    ("reset_fn", False, "reset_fn(model, seed, options)", "batch_size, reset_mask, generator"),
    ("transition_fn", True, "transition_fn(state, action)", "generator"),
    ("render_fn", False, "render_fn(model, state, obs)", None),
    ("decode_fn", False, "decode_fn(model, state)", None),
]


@pytest.mark.parametrize("hook,on_model,start,extras", FORMS, ids=[f"{row[0]}-{row[1]}" for row in FORMS])
def test_accepted_forms(hook, on_model, start, extras):
    text = accepted_forms(hook, on_model)
    assert text.startswith(start)
    if extras is None:
        assert "by name also" not in text
    else:
        assert text.endswith(f"; by name also {extras}")


def test_every_hook_of_the_contract_takes_the_model_first():
    # TorchWM's lists: a hook found on the model drops exactly this first argument
    assert all(positional[0] == "model" for positional, _ in CONTRACT.values())

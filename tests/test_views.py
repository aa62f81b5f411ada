"""Task views: each family's declared reading of its observation and writing of its answer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from r3m import envs, tools
from r3m.envs.views import CharView, SymbolView, split_transcript, view_of, views_of
from r3m.learn.data import DemoSource, collate_fill, episode_examples, task_spec
from r3m.learn.io import IGNORE, ViewIO, with_views
from r3m.learn.policy import Policy
from r3m.learn.rollout import make_vec, run_episodes
from r3m_agent import R3M, DenseTransformer, R3MConfig, dense_config_like
from r3m_agent.config import use_result_choice
from r3m_agent.tokenizer import PAD_ID

BUILTIN = ("sudoku", "arithmetic", "listops", "logic", "dsl", "memory", "instruct", "prefix")
SYMBOL_VIEWS = [(f, name) for f in BUILTIN for name, v in views_of(envs.make_family(f)).items()
                if isinstance(v, SymbolView)]


def tiny(specs, **kw) -> R3M:
    torch.manual_seed(0)
    cfg = R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=4, semantic_slots=0, K=2,
                    tool_names=tuple(tools.list_tools()), **kw)
    return R3M(with_views(cfg, specs)).eval()


def test_the_views_that_the_suite_declares():
    assert {(f, n) for f, n in SYMBOL_VIEWS} == {("prefix", "bits"), ("arithmetic", "places"), ("sudoku", "cells"), ("sudoku", "cells-all"),
                                                 ("memory", "words"), ("memory", "words-sep")}
    for family in BUILTIN:  # the first declared view is the default; every family keeps its character view
        fam = envs.make_family(family)
        assert isinstance(views_of(fam)["chars"], CharView)
        assert view_of(fam).name == next(iter(fam.views()), "chars")


@pytest.mark.parametrize("family,view", SYMBOL_VIEWS)
def test_the_gold_answer_encoded_and_decoded_is_right(family, view):
    """For every level, both splits, whole prompts and streamed steps: the verifier accepts what
    the view decodes from the symbols it encodes the gold answer as."""
    fam = envs.make_family(family)
    v = view_of(fam, view)
    for level in fam.levels:
        for split in ("train", "test"):
            for i in range(5):
                inst = fam.instance(split, i, level)
                enc = v.encode(inst.prompt)
                gold = v.target(inst.prompt, inst.answer)
                assert len(gold) == len(enc.outputs) and set(gold) <= set(v.out_symbols)
                assert fam.verify(inst, v.decode(inst.prompt, gold)).correct
                assert enc.decision == len(enc.symbols) - 1 - len(enc.slots)  # the <sep>
                if fam.streams:
                    for step in fam.stream(inst):
                        v.encode(step.observation)  # every streamed step reads too
                        if step.expected:
                            gold_step = v.target(step.observation, step.expected)
                            assert v.decode(step.observation, gold_step) == step.expected


@pytest.mark.parametrize("family", ["arithmetic", "sudoku"])
def test_a_symbol_views_call_is_the_experts_call(family):
    """A call is a decision: the view derives the ARGS the expert writes from the observation."""
    fam = envs.make_family(family)
    v = view_of(fam)
    for level in fam.levels[:3]:
        inst = fam.instance("train", 0, level)
        assert v.call_args(inst.prompt) == fam.tool_args(inst)
        assert v.call_args(inst.prompt + "<call>x y</call><result>1</result>") == fam.tool_args(inst)


def test_transcripts_become_events():
    script = split_transcript("calc: 1+2<call>calculator 1+2</call><result>error: no</result>"
                              "<call>calculator 1+2</call><result>3</result>")
    assert script.prompt == "calc: 1+2" and script.last_result == "3"
    assert script.events == ("<call>", "<error>", "<call>", "<result>")
    assert split_transcript("calc: 1+2").events == () and split_transcript("calc: 1+2").last_result is None


def test_every_trained_output_position_has_a_real_target():
    """Prefix bits: each bit writes its own parity, so no output position is padding in training,
    and a string twice as long uses the same kind of position (the rule is length-free)."""
    spec = task_spec("prefix", (1, 2, 3))
    model = tiny([spec])
    io = ViewIO.of(spec, model.cfg)
    source = DemoSource([spec], model.cfg.tool_names, 0, stream="demos", tool_fraction=0.0, turns=64)
    examples = [e for ep in source.get(0)[1] for e in ep]
    batch = collate_fill(examples, io)
    real = batch.targets[batch.layout.out_valid]
    assert (real != IGNORE).all() and (real != PAD_ID).all()
    assert ((batch.targets == IGNORE) == ~batch.layout.out_valid).all()
    long = io.batch(["prefix: " + "01" * 32])
    assert int(long.out_valid.sum()) == 64 and not long.slots.any()


def test_the_bits_window_is_local_but_the_decision_point_reads_everything():
    from r3m_agent.blocks import prepare

    spec = task_spec("prefix", (1,))
    model = tiny([spec])
    lay = ViewIO.of(spec, model.cfg).batch(["prefix: 01101"])
    b = prepare(lay.ids, lay.mask, "fill", None, lay.decision, slots=lay.slots, outputs=lay.outputs,
                out_valid=lay.out_valid, coords=lay.coords, window=(1, 0))
    allowed = b.attn_mask[0, 0]
    assert allowed[3].nonzero().flatten().tolist() == [2, 3]  # a bit: its left neighbour and itself
    assert allowed[5].all()  # the <sep>: every position
    # the model gives bit 2's output the same value whatever lies two or more bits before it
    out_a = model(lay.ids, lay.mask, mode="fill", **lay.forward_kwargs(), window=(1, 0), K=1)
    changed = lay.ids.clone()
    changed[0, 0] = lay.ids[0, 1] if lay.ids[0, 0] != lay.ids[0, 1] else lay.ids[0, 2]
    out_b = model(changed, lay.mask, mode="fill", **lay.forward_kwargs(), window=(1, 0), K=1)
    torch.testing.assert_close(out_a.logits[0, 2:], out_b.logits[0, 2:])


def test_closed_set_answers_are_always_members_of_the_set():
    """Memory words: whatever the (untrained) model's state, with reads on or off, every answer is
    one of the six places, so a model that knows nothing is at least at chance."""
    spec = task_spec("memory", (1,), stream=True)
    model = tiny([spec])
    places = set(view_of(envs.make_family("memory")).out_symbols)
    for read in (True, False):
        policy = Policy(model, spec, K=2, read_memory=read)
        vec = make_vec("memory-v0", 6, stream=True)
        try:
            eps = run_episodes(policy, vec, list(range(6)), {"split": "test", "difficulty": 1}, allow_tools=False,
                               sample=True, generator=torch.Generator().manual_seed(1))
        finally:
            vec.close()
        assert all(e.turns[-1].action in places for e in eps)


def test_using_the_result_is_one_decision_and_the_env_gets_the_verified_answer():
    """Arithmetic places: the policy calls (the view writes the expression), then chooses "use the
    result": the env receives the calculator's verified value and rewards it."""
    spec = task_spec("arithmetic", (1,))
    model = tiny([spec])
    use = use_result_choice(model.cfg.tool_names)
    with torch.no_grad():
        model.tool_head.weight.zero_()
        model.tool_head.bias.fill_(-10.0)
        model.tool_head.bias[1 + list(model.cfg.tool_names).index("calculator")] = 0.0
        model.tool_head.bias[use] = 5.0  # preferred, but only possible once a result is there
    vec = make_vec("arithmetic-v0", 4)
    try:
        eps = run_episodes(Policy(model, spec, K=2), vec, [0, 1, 2, 3], {"split": "test", "difficulty": 2})
    finally:
        vec.close()
    for ep in eps:
        assert [t.tool for t in ep.turns] == [1 + list(model.cfg.tool_names).index("calculator"), use]
        assert ep.correct and ep.tool_calls == 1
        assert ep.turns[-1].action == split_transcript(ep.turns[-1].observation).last_result
        assert (ep.turns[-1].payload == PAD_ID).all()  # nothing written


def test_the_experts_answer_after_a_result_is_the_use_result_choice():
    spec = task_spec("arithmetic", (1,))
    env = envs.TextTaskEnv("arithmetic")
    names = tuple(tools.list_tools())
    direct = episode_examples(env, 5, 1, False, names)
    called = episode_examples(env, 5, 1, True, names)
    assert [e.tool for e in direct] == [0]
    assert [e.tool for e in called] == [1 + names.index("calculator"), use_result_choice(names)]
    model = tiny([spec])
    batch = collate_fill(called, ViewIO.of(spec, model.cfg))
    assert (batch.targets == IGNORE).all()  # a call and a used result write nothing


def test_dense_baselines_read_the_same_view():
    spec = task_spec("sudoku", (1,))
    model = tiny([spec])
    dense = DenseTransformer(dense_config_like(model.cfg)).eval()
    assert dense.cfg.symbols == model.cfg.symbols and dense.cfg.coords == model.cfg.coords
    inst = envs.make_family("sudoku").instance("test", 0, 1)
    for net in (model, dense):
        dec = Policy(net, spec, K=2).act([inst.prompt], allow_tools=False)
        assert len(dec.actions[0]) == 81 and set(dec.actions[0]) <= set("123456789")


def test_the_cell_view_is_shorter_and_feeds_predictions_back():
    spec = task_spec("sudoku", (1,))
    chars = dataclasses.replace(task_spec("sudoku", (1,), view="chars"))
    model = tiny([spec])
    assert model.cfg.feedback and model.feedback is not None
    prompt = envs.make_family("sudoku").instance("test", 0, 1).prompt
    cells, text = ViewIO.of(spec, model.cfg).batch([prompt]), ViewIO.of(chars, model.cfg).batch([prompt])
    assert cells.ids.shape[1] == 82 and text.ids.shape[1] == 1 + len(prompt) + 1 + chars.width
    with torch.no_grad():
        model.feedback.weight.normal_()
        kw = dict(mode="fill", **cells.forward_kwargs(), K=3)
        fed, plain = model(cells.ids, cells.mask, feedback=True, **kw), model(cells.ids, cells.mask, **kw)
    assert not torch.allclose(fed.logits, plain.logits)


def test_a_model_built_for_other_views_says_so():
    model = tiny([task_spec("prefix", (1,))])
    with pytest.raises(ValueError, match="not built for view 'places'"):
        ViewIO.of(task_spec("arithmetic", (1,)), model.cfg)


def test_summary_gives_the_answer_slots_what_the_observation_says():
    """``summary``: each answer slot's input gains the normalised mean of the observation's token
    embeddings (not its coordinates, the <sep> or the slots); every other position is unchanged, and
    a view without it changes nothing."""
    from r3m_agent.blocks import embed_inputs, prepare

    spec = task_spec("memory", (1,), stream=True)
    model = R3M(with_views(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=4,
                                     semantic_slots=0, K=1), [spec]))
    io = ViewIO.of(spec, model.cfg)
    assert io.model_kwargs()["summary"] is True
    lay = io.batch(["Where is Mary?", "Where is the football?"])
    b = prepare(lay.ids, lay.mask, "fill", None, lay.decision, model.cfg.input_sees_slots, slots=lay.slots,
                outputs=lay.outputs, out_valid=lay.out_valid, coords=lay.coords)
    plain, summed = embed_inputs(model.embed, model.coord_embed, b), embed_inputs(model.embed, model.coord_embed, b, True)
    for row in range(2):
        words = [i for i in range(lay.ids.shape[1]) if lay.mask[row, i] and not lay.slots[row, i] and i != lay.decision[row]]
        mean = model.embed(lay.ids[row, words]).mean(0)
        want = mean / mean.pow(2).mean().add(1e-6).sqrt()
        slot = int(lay.outputs[row, 0])
        assert torch.allclose(summed[row, slot] - plain[row, slot], want, atol=1e-5)
        others = [i for i in range(lay.ids.shape[1]) if i != slot]
        assert torch.equal(summed[row, others], plain[row, others])
    assert not torch.allclose(summed[0, int(lay.outputs[0, 0])], summed[1, int(lay.outputs[1, 0])])
    # a causal layout has no slots: nothing changes
    causal = prepare(lay.ids, lay.mask, "causal", None, None, False)
    assert torch.equal(embed_inputs(model.embed, None, causal, True), embed_inputs(model.embed, None, causal))

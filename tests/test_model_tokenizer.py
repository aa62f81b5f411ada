import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m_agent import Tokenizer
from r3m_agent.tokenizer import VOCAB_SIZE
from r3m.tools.syntax import CALL_CLOSE, CALL_OPEN, DELIMITERS, RESULT_CLOSE, RESULT_OPEN, format_call

TOK = Tokenizer()
PRINTABLE = "".join(chr(c) for c in range(32, 127)) + "\n"
# text drawn from printable characters and whole delimiters, so delimiter edge cases are common
pieces = st.one_of(st.text(alphabet=PRINTABLE, max_size=12), st.sampled_from(DELIMITERS + ("<", "</", "<call", ">")))
texts = st.lists(pieces, max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_round_trip(text):
    ids = TOK.encode(text, add_bos=True, add_eos=True)
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert TOK.decode(ids) == text


def test_delimiters_are_single_tokens():
    ids = TOK.encode(format_call("calculator", "2+3") + RESULT_OPEN + "5" + RESULT_CLOSE)
    assert ids[0] == TOK.call_id and TOK.call_close_id in ids
    assert ids.count(TOK.result_id) == 1 and ids[-1] == TOK.result_close_id
    assert len(ids) == 1 + len("calculator 2+3") + 1 + 1 + 1 + 1
    assert TOK.encode(CALL_OPEN + CALL_CLOSE) == [TOK.call_id, TOK.call_close_id]
    assert TOK.encode("<cal") == [TOK.encode(c)[0] for c in "<cal"]  # a prefix is plain characters


def test_special_ids_distinct_and_below_vocab():
    special = [TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.sep_id, TOK.mask_id,
               TOK.call_id, TOK.call_close_id, TOK.result_id, TOK.result_close_id]
    assert len(set(special)) == len(special) and max(special) < TOK.vocab_size
    assert TOK.vocab_size == len(special) + 96  # 95 printable + newline


@pytest.mark.parametrize("text, char, pos", [("ab\tc", "\t", 2), ("é", "é", 0), ("ok<call>\x00", "\x00", 8)])
def test_unknown_character_error(text, char, pos):
    with pytest.raises(ValueError) as err:
        TOK.encode(text)
    assert repr(char) in str(err.value) and f"position {pos}" in str(err.value)


def test_decode_specials_and_eos():
    ids = [TOK.bos_id] + TOK.encode("hi") + [TOK.sep_id, TOK.mask_id, TOK.eos_id] + TOK.encode("x") + [TOK.pad_id]
    assert TOK.decode(ids) == "hix"
    assert TOK.decode(ids, stop_at_eos=True) == "hi"
    assert TOK.decode(ids, show_special=True) == "<bos>hi<sep><mask><eos>x<pad>"
    with pytest.raises(ValueError, match="outside vocabulary"):
        TOK.decode([VOCAB_SIZE])


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_encode(side):
    texts = ["abc", "", "hello" + CALL_OPEN]
    ids, mask = TOK.batch_encode(texts, pad_side=side, add_bos=True, add_eos=True)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 8)
    for row, text in enumerate(texts):
        real = ids[row][mask[row]].tolist()
        assert real == TOK.encode(text, add_bos=True, add_eos=True)
        assert (ids[row][~mask[row]] == TOK.pad_id).all()
        first_real = int(mask[row].float().argmax())
        assert (first_real == 0) if side == "right" else (first_real == 8 - len(real))
    assert TOK.batch_decode(ids) == texts
    with pytest.raises(ValueError, match="pad_side"):
        TOK.batch_encode(texts, pad_side="middle")

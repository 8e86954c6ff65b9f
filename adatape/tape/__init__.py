"""The elastic tape: banks, the adaptive tape reader and its Linen layer.

from adatape import tape
readout = tape.read_tape(query_BxD, bank, tape.TapeConfig(...))
"""

from adatape.tape.banks import LearnableBank, PatchBank, SequenceBank
from adatape.tape.config import TapeConfig
from adatape.tape.layer import TapeAppender
from adatape.tape.reader import TapeReadout, read_tape

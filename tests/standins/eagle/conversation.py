"""Stand-in of ``eagle/conversation.py``: ``Conversation``, ``SeparatorStyle`` and the
``vicuna_v1`` template VLMEvalKit's Eagle wrapper uses (same system text, roles and
separators, so prompts are byte-identical to upstream's).

Only the SINGLE and TWO separator styles are implemented (upstream has more;
VLMEvalKit uses ``vicuna_v1``, style TWO).
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    """How turns are joined (upstream names)."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


@dataclasses.dataclass
class Conversation:
    """A chat history rendered into one prompt string."""

    system: str
    roles: tuple[str, str]
    messages: list
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def get_prompt(self) -> str:
        if self.sep_style == SeparatorStyle.SINGLE:
            seps = [self.sep, self.sep]
        elif self.sep_style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
        else:
            raise ValueError(f"stand-in supports SINGLE and TWO separator styles, not {self.sep_style}")
        out = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            if message:
                if isinstance(message, tuple):
                    message = message[0]
                out += f"{role}: {message}{seps[i % 2]}"
            else:
                out += f"{role}:"
        return out

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return Conversation(system=self.system, roles=self.roles,
                            messages=[[r, m] for r, m in self.messages], offset=self.offset,
                            sep_style=self.sep_style, sep=self.sep, sep2=self.sep2, version=self.version)


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

default_conversation = conv_vicuna_v1
conv_templates = {"default": conv_vicuna_v1, "v1": conv_vicuna_v1, "vicuna_v1": conv_vicuna_v1}

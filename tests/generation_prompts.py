"""Random prompts of mixed lengths in the official layout, for the generation engines' tests."""

from __future__ import annotations

import random

from gpa import prompts


def random_prompts(layout, task: str, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(2, 60)
        glm = [rng.randrange(layout.glm_count) for _ in range(length)]
        semantic = [rng.randrange(layout.semantic_count) for _ in range(4 * length)]
        voice = [rng.randrange(layout.global_count) for _ in range(32)]
        out.append(prompts.stt_prompt(layout, glm, semantic) if task == "stt"
                   else prompts.vc_prompt(layout, voice, semantic))
    return out

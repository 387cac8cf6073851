from pathlib import Path

# Real speech recordings live beside the project (../shared/audio), never inside it: tests that use
# them skip with a reason when the folder is absent (a user's fresh clone).
SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"

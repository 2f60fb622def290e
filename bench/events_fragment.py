"""What one poll of the live Events page costs, with and without news in the store.

    .venv/bin/python bench/events_fragment.py [--events 2000] [--rounds 20]

The Events page's fragment (components/event_log.py) polls `SessionStore.version` every 2 s while a
conversation runs, and rebuilds its tables only when the version changed. This writes a conversation
with `--events` events to a temporary store and times, in this process (medians, ms):
- poll: the version query alone, what a poll without news costs in queries;
- redraw: turning the tables already built into the Arrow bytes Streamlit sends (every poll does
  this, news or not, since a fragment must draw its elements each run);
- rebuild: reading the events, transcript and usage again and building the tables (a poll with news),
  plus the redraw;
- baseline: what the page did before, on every rerun: every stored event read and sent again.
Figures taken on a shared, loaded machine are noisy: compare the ratios, in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.dataframe_util import convert_pandas_df_to_arrow_bytes  # noqa: E402

from components.event_log import LIVE_ROWS, _read  # noqa: E402
from koe.store import SessionStore  # noqa: E402


def median_ms(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = SessionStore(Path(folder) / "koe.sqlite3")
        c = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={})
        for n in range(args.events):
            store.record_event(c, "server", {"type": "response.output_audio_transcript.delta", "event_id": f"e{n}",
                                             "response_id": "resp_1", "item_id": "item_1", "output_index": 0,
                                             "content_index": 0, "delta": "word " * 8})
        assert store.flush(30)
        version = store.version(c)
        snapshot = _read(store, c, version, (), "all")

        def redraw() -> None:
            convert_pandas_df_to_arrow_bytes(snapshot.events)
            convert_pandas_df_to_arrow_bytes(snapshot.usage)

        def rebuild() -> None:
            fresh = _read(store, c, version, (), "all")
            convert_pandas_df_to_arrow_bytes(fresh.events)
            convert_pandas_df_to_arrow_bytes(fresh.usage)

        def baseline() -> None:
            store.transcript(c)
            convert_pandas_df_to_arrow_bytes(store.usage(c))
            store.events(c)
            convert_pandas_df_to_arrow_bytes(store.events(c))

        figures = {"poll (version query)": median_ms(lambda: store.version(c), args.rounds * 5),
                   "redraw (cached tables to Arrow)": median_ms(redraw, args.rounds),
                   "rebuild (read and build, then redraw)": median_ms(rebuild, args.rounds),
                   "baseline (the page before: everything, every rerun)": median_ms(baseline, args.rounds)}
        store.close()
    print(f"Events page, one poll, {args.events} events stored ({LIVE_ROWS} shown while running); "
          "medians, noisy shared machine")
    for name, ms in figures.items():
        print(f"  {name:55s} {ms:8.2f} ms")
    quiet = figures["poll (version query)"] + figures["redraw (cached tables to Arrow)"]
    before = figures["baseline (the page before: everything, every rerun)"]
    print(f"  a poll without news costs {quiet / before:.1%} of a baseline rerun")


if __name__ == "__main__":
    main()

//! A source read on a thread of its own into a two-slot mailbox, so that the
//! inference thread never blocks on a read it cannot interrupt (stdin, a
//! stalled camera) and can stop cleanly. Files and streams wait for the
//! pipeline (nothing is skipped); a live camera never waits: when inference
//! is behind, the newest frame replaces the oldest and the skip is counted.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::camera::{self, CaptureSettings};
use crate::source::{Item, Source, SourceSpec};

/// Items held between the reader and the pipeline.
const CAPACITY: usize = 2;

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    skipped: u64,
    /// The reader has nothing more.
    ended: bool,
    /// The pipeline is gone; the reader should stop.
    abandoned: bool,
}

#[derive(Default)]
struct Mailbox {
    state: Mutex<State>,
    changed: Condvar,
}

impl Mailbox {
    /// Queues an item, waiting for room unless `latest_wins`; false once the pipeline is gone.
    fn push(&self, item: Item, latest_wins: bool) -> bool {
        let mut state = self.state.lock().unwrap();
        if latest_wins {
            if matches!(item, Item::Frame(_)) && state.items.len() >= CAPACITY {
                if let Some(oldest) = state.items.iter().position(|i| matches!(i, Item::Frame(_))) {
                    state.items.remove(oldest);
                    state.skipped += 1;
                }
            }
        } else {
            while state.items.len() >= CAPACITY && !state.abandoned {
                state = self.changed.wait(state).unwrap();
            }
        }
        if state.abandoned {
            return false;
        }
        state.items.push_back(item);
        self.changed.notify_all();
        true
    }

    fn end(&self) {
        self.state.lock().unwrap().ended = true;
        self.changed.notify_all();
    }
}

/// What the pipeline gets from a feed.
#[derive(Debug)]
pub enum Next {
    /// An item of the source.
    Item(Item),
    /// Nothing arrived within the wait.
    Idle,
    /// The source has ended and everything was taken.
    Ended,
}

/// A source being read on its own thread.
pub struct Feed {
    mailbox: Arc<Mailbox>,
}

impl Feed {
    /// Opens the source (files and streams fail here when unusable) and starts reading it.
    pub fn spawn(spec: &SourceSpec, capture: CaptureSettings, stop: Arc<AtomicBool>) -> Result<Self> {
        let mailbox = Arc::new(Mailbox::default());
        let writer = mailbox.clone();
        match spec {
            SourceSpec::Camera(device) => {
                let device = device.clone();
                std::thread::Builder::new()
                    .name(format!("capture {device}"))
                    .spawn(move || {
                        camera::capture(&device, &capture, &stop, |item| writer.push(item, true));
                        writer.end();
                    })?;
            }
            _ => {
                let source = Source::open(spec)?;
                std::thread::Builder::new().name("read".into()).spawn(move || {
                    for item in source {
                        if !writer.push(item, false) {
                            break;
                        }
                    }
                    writer.end();
                })?;
            }
        }
        Ok(Self { mailbox })
    }

    /// The next item, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> Next {
        let mut state = self.mailbox.state.lock().unwrap();
        if state.items.is_empty() && !state.ended && state.skipped == 0 {
            state = self.mailbox.changed.wait_timeout(state, wait).unwrap().0;
        }
        if state.skipped > 0 {
            let count = std::mem::take(&mut state.skipped);
            return Next::Item(Item::Skipped { count });
        }
        match state.items.pop_front() {
            Some(item) => {
                self.mailbox.changed.notify_all();
                Next::Item(item)
            }
            None if state.ended => Next::Ended,
            None => Next::Idle,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.mailbox.state.lock().unwrap().abandoned = true;
        self.mailbox.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Frame;

    fn frame(index: u64) -> Item {
        Item::Frame(Frame {
            index,
            name: index.to_string(),
            image: image::RgbImage::new(1, 1),
        })
    }

    fn taken(feed: &Feed) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match feed.next(Duration::from_millis(10)) {
                Next::Item(Item::Frame(f)) => out.push(format!("frame {}", f.index)),
                Next::Item(Item::Skipped { count }) => out.push(format!("skipped {count}")),
                Next::Item(other) => out.push(format!("{other:?}")),
                Next::Idle | Next::Ended => return out,
            }
        }
    }

    #[test]
    fn a_live_source_keeps_the_newest_frames_and_counts_the_rest() {
        let feed = Feed {
            mailbox: Arc::new(Mailbox::default()),
        };
        for i in 0..5 {
            assert!(feed.mailbox.push(frame(i), true));
        }
        assert!(feed.mailbox.push(Item::Reconnected, true));
        assert_eq!(taken(&feed), ["skipped 3", "frame 3", "frame 4", "Reconnected"]);
    }

    #[test]
    fn a_file_source_waits_for_the_pipeline_and_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("normgate-feed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..6 {
            image::RgbImage::new(2, 2).save(dir.join(format!("{i}.png"))).unwrap();
        }
        let feed = Feed::spawn(
            &SourceSpec::Path(dir.clone()),
            CaptureSettings::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        let mut frames = 0;
        loop {
            match feed.next(Duration::from_secs(5)) {
                Next::Item(Item::Frame(f)) => {
                    assert_eq!(f.index, frames);
                    frames += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Next::Ended => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(frames, 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dropping_the_feed_releases_a_waiting_reader() {
        let mailbox = Arc::new(Mailbox::default());
        let writer = mailbox.clone();
        let reader = std::thread::spawn(move || (0..10).take_while(|&i| writer.push(frame(i), false)).count());
        std::thread::sleep(Duration::from_millis(50));
        drop(Feed { mailbox });
        assert_eq!(reader.join().unwrap(), CAPACITY);
    }
}

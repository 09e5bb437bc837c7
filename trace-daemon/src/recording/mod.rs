//! The recording format: capture now, analyse anywhere.
//!
//! ```text
//! "KVSCOPE\0"  u32 format version  u32 header length  header (JSON)
//! frame*:      u32 payload length  u8 tag  payload  u32 crc32(tag, payload)
//! ```
//! Little-endian. Tags: 1 = one ABI event record (`trace_common::Event`, raw),
//! 2 = a kernel stack (JSON: id, ips, symbols), 3 = lost-event counters (JSON),
//! 4 = the kernel side's other drops (JSON, `event::drops::Drops`; readers that
//! predate it skip it as an unknown frame), 5 = a blind gap (JSON, [`Gap`]:
//! watched modules changed and kvscope attached again; stack ids after it
//! are offset by [`STACK_IDS_PER_ATTACH`] per attach, so none is reused),
//! 6 = who a VM belongs to (JSON, [`VmIdentity`]), after its creation's event.
//! A file cut short by a crash reads up to its last whole frame; a frame whose
//! checksum fails ends the read with the offset named. Files of another format
//! version are refused with a clear message.
//!
//! Also here: `jsonl` (the event stream as JSON lines) and `private_file`
//! (files created 0600 unless shared).
pub mod jsonl;
pub mod private_file;
use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{
    event::{self, Event, drops::Drops},
    identity::Identity,
};

pub const MAGIC: &[u8; 8] = b"KVSCOPE\0";
pub const FORMAT_VERSION: u32 = 1;
/// Above this a version field is damage (versions go up one at a time).
const MAX_PLAUSIBLE_VERSION: u32 = 255;
/// Frames larger than this are not ours: a corrupt length.
const MAX_FRAME: u32 = 1 << 20;

const TAG_EVENT: u8 = 1;
const TAG_STACK: u8 = 2;
const TAG_LOST: u8 = 3;
const TAG_DROPS: u8 = 4;
const TAG_GAP: u8 = 5;
const TAG_IDENTITY: u8 = 6;

/// The VM at `kvm`, seen created at `created_ns`, belongs to `identity`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmIdentity {
    #[serde(with = "crate::hexaddr::one")]
    pub kvm: u64,
    pub created_ns: u64,
    pub identity: Identity,
}

/// Each attach has a stack map of its own whose ids restart at 0: the
/// recording adds this much per attach (the map holds far fewer).
pub const STACK_IDS_PER_ATTACH: i32 = 1 << 20;

/// A time in which kvscope saw nothing: a watched module went away or came
/// back, and kvscope attached again. Monotonic ns, the events' clock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Gap {
    /// The last look that found the modules as before.
    pub from_ns: u64,
    /// Attached again (or, when `to_ns` is the end, never).
    pub to_ns: u64,
    /// What changed: "module kvm unloaded, module kvm loaded".
    pub why: String,
}

impl Gap {
    /// "blind from 12.301 s to 17.902 s (5601 ms): module vfio_pci loaded",
    /// times from the recording's start.
    pub fn summary(&self, start_ns: u64) -> String {
        let at = |ns: u64| ns.saturating_sub(start_ns) as f64 / 1e9;
        format!(
            "blind from {:.3} s to {:.3} s ({} ms): {}",
            at(self.from_ns),
            at(self.to_ns),
            self.to_ns.saturating_sub(self.from_ns) / 1_000_000,
            self.why
        )
    }
}

/// What a reader needs to interpret the events without the recording host.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub abi_version: u16,
    pub kvscope_version: String,
    pub kernel_release: String,
    pub hostname: String,
    /// Tier and stack variant, as `check` named them.
    pub tier: String,
    pub variant: String,
    /// Offsets used: field -> offset (None: unknown on that kernel).
    pub offsets: BTreeMap<String, Option<u32>>,
    /// Role -> "symbol method" lines of the attach plan.
    pub attach: BTreeMap<String, Vec<String>>,
    /// Whether kvm_destroy_vm was hooked (else the engine infers destroys).
    #[serde(default)]
    pub destroy_observable: bool,
    /// Whether the device fd's release is the close (no close hook follows).
    #[serde(default)]
    pub release_closes: bool,
    /// Monotonic time (ns) and wall-clock time (unix ns) at the start, to place
    /// event timestamps in real time.
    pub mono_start_ns: u64,
    pub wall_start_ns: u64,
    /// Whether events were proven to reach user space at attach. Absent in
    /// recordings older than the self-test: never verified.
    #[serde(default)]
    pub delivery: Delivery,
    /// `deep` or `lean` (`--locks`); empty in recordings made before the
    /// modes existed, which were all deep.
    #[serde(default)]
    pub lock_watch: String,
    /// Whether vfio_file_set_kvm takes group_lock on the recorded kernel
    /// (the lock table's edge; absent in older recordings: not used).
    #[serde(default)]
    pub set_kvm_takes_group_lock: bool,
    /// The tracepoints attached (`category:name`); absent in older
    /// recordings. Lean at tiers 1-2 attaches no `syscalls:` one.
    #[serde(default)]
    pub tracepoints: Vec<String>,
}

/// The attach-time self-test: kvscope makes the kernel side emit one event
/// on a harmless trigger and waits for it through the ring buffer. Without
/// it, an empty recording cannot tell "nothing happened" from "nothing was
/// delivered".
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub verified: bool,
    /// From the trigger to the event in user space, microseconds.
    #[serde(default)]
    pub latency_us: Option<u64>,
    /// Why it is not verified (empty when it is).
    #[serde(default)]
    pub detail: String,
}

impl Delivery {
    /// "verified at attach (41 µs)", or "NOT VERIFIED: why".
    pub fn summary(&self) -> String {
        match (self.warning(), self.latency_us) {
            (Some(w), _) => format!("NOT VERIFIED: {w}"),
            (None, Some(us)) if us < 1000 => format!("verified at attach ({us} µs)"),
            (None, Some(us)) => format!("verified at attach ({:.1} ms)", us as f64 / 1e3),
            (None, None) => "verified at attach".to_owned(),
        }
    }

    /// One line for a warning, or None when delivery was verified.
    pub fn warning(&self) -> Option<String> {
        if self.verified {
            return None;
        }
        let why = if self.detail.is_empty() {
            "recorded by a kvscope that did not self-test delivery"
        } else {
            &self.detail
        };
        Some(format!(
            "event delivery was never verified for this capture ({why}): an absence of events proves nothing"
        ))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stack {
    pub id: u32,
    pub ips: Vec<u64>,
    /// `name+0xoff [module]` per ip, symbolised at record time with the
    /// recording host's kallsyms (empty when addresses were hidden).
    pub symbols: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Event(Box<trace_common::Event>),
    Stack(Stack),
    /// Lost events per hook so far (cumulative).
    Lost(BTreeMap<String, u64>),
    /// Stack, stash and watched-map drops so far (cumulative).
    Drops(Drops),
    Gap(Gap),
    Identity(VmIdentity),
}

pub struct Writer<W: Write> {
    out: W,
    pub frames: u64,
}

impl Writer<BufWriter<File>> {
    /// `file` is opened by the caller (see `private_file`: recordings hold
    /// kernel addresses and are 0600 unless shared).
    pub fn create(file: File, header: &Header) -> anyhow::Result<Self> {
        Writer::new(BufWriter::new(file), header)
    }
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> anyhow::Result<Self> {
        let h = serde_json::to_vec(header)?;
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(h.len() as u32).to_le_bytes())?;
        out.write_all(&h)?;
        Ok(Writer { out, frames: 0 })
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[tag]);
        crc.update(payload);
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&[tag])?;
        self.out.write_all(payload)?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.frames += 1;
        Ok(())
    }

    pub fn event(&mut self, e: &trace_common::Event) -> io::Result<()> {
        self.frame(TAG_EVENT, event::record_to_bytes(e))
    }

    pub fn stack(&mut self, s: &Stack) -> io::Result<()> {
        self.frame(TAG_STACK, &serde_json::to_vec(s)?)
    }

    pub fn lost(&mut self, l: &BTreeMap<String, u64>) -> io::Result<()> {
        self.frame(TAG_LOST, &serde_json::to_vec(l)?)
    }

    pub fn drops(&mut self, d: &Drops) -> io::Result<()> {
        self.frame(TAG_DROPS, &serde_json::to_vec(d)?)
    }

    pub fn identity(&mut self, i: &VmIdentity) -> io::Result<()> {
        self.frame(TAG_IDENTITY, &serde_json::to_vec(i)?)
    }

    pub fn gap(&mut self, g: &Gap) -> io::Result<()> {
        self.frame(TAG_GAP, &serde_json::to_vec(g)?)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// How a read ended, when not at a clean end of file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Damage {
    /// The file ends inside a frame (a crash while recording): everything
    /// before `offset` was read.
    Truncated { offset: u64 },
    /// A frame failed its checksum or has an impossible length.
    Corrupt { offset: u64, why: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated { offset } => write!(
                f,
                "file ends inside a frame at byte {offset} (recording interrupted?); read everything before it"
            ),
            Damage::Corrupt { offset, why } => {
                write!(
                    f,
                    "corrupt frame at byte {offset} ({why}); stopped reading there"
                )
            }
        }
    }
}

pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    offset: u64,
    pub damage: Option<Damage>,
    /// Frames with a tag this version does not know (skipped, counted).
    pub unknown_frames: u64,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Reader::new(BufReader::new(f)).with_context(|| format!("reading {}", path.display()))
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut fixed = [0u8; 16];
        let n = read_full(&mut input, &mut fixed)?;
        if n == 0 {
            bail!("the file is empty: not a kvscope recording");
        }
        if n < 8 || &fixed[..8] != MAGIC {
            bail!("not a kvscope recording (no KVSCOPE magic at the start)");
        }
        if n < 16 {
            bail!("kvscope recording cut short inside its header");
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        // Versions go up one at a time: a number no kvscope could have
        // written is a damaged header, not a file from another version.
        if version == 0 || version > MAX_PLAUSIBLE_VERSION {
            bail!(
                "damaged recording header: its format version field reads {version}, which no kvscope writes (this one writes {FORMAT_VERSION}); the file is damaged, not from another version"
            );
        }
        if version != FORMAT_VERSION {
            bail!(
                "recording format version {version}, this kvscope reads version {FORMAT_VERSION}; \
                 use a kvscope of the version that recorded it"
            );
        }
        let hlen = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if hlen > MAX_FRAME {
            bail!("corrupt header length {hlen}");
        }
        let mut h = vec![0u8; hlen as usize];
        if read_full(&mut input, &mut h)? < h.len() {
            bail!("kvscope recording cut short inside its header");
        }
        let header: Header =
            serde_json::from_slice(&h).context("the recording's header is not valid")?;
        if header.abi_version != trace_common::ABI_VERSION {
            bail!(
                "events of ABI version {}, this kvscope reads {}; use a kvscope of the version that recorded it",
                header.abi_version,
                trace_common::ABI_VERSION
            );
        }
        Ok(Reader {
            input,
            header,
            offset: 16 + hlen as u64,
            damage: None,
            unknown_frames: 0,
        })
    }

    /// Records damage at `offset` and ends the read.
    fn corrupt(&mut self, offset: u64, why: impl Into<String>) -> Option<Frame> {
        self.damage = Some(Damage::Corrupt {
            offset,
            why: why.into(),
        });
        None
    }

    /// The next frame; None at the end or at the first damage (see `damage`).
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.damage.is_some() {
                return None;
            }
            let start = self.offset;
            let mut head = [0u8; 5];
            let n = match read_full(&mut self.input, &mut head) {
                Ok(n) => n,
                Err(e) => {
                    return self.corrupt(start, e.to_string());
                }
            };
            if n == 0 {
                return None;
            }
            if n < 5 {
                self.damage = Some(Damage::Truncated { offset: start });
                return None;
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            let tag = head[4];
            if len > MAX_FRAME {
                return self.corrupt(start, format!("frame length {len}"));
            }
            let mut payload = vec![0u8; len as usize + 4];
            match read_full(&mut self.input, &mut payload) {
                Ok(k) if k == payload.len() => {}
                _ => {
                    self.damage = Some(Damage::Truncated { offset: start });
                    return None;
                }
            }
            self.offset += 5 + payload.len() as u64;
            let crc_got = u32::from_le_bytes(payload[len as usize..].try_into().expect("4 bytes"));
            let body = &payload[..len as usize];
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[tag]);
            crc.update(body);
            if crc.finalize() != crc_got {
                return self.corrupt(start, "checksum mismatch");
            }
            let frame = match tag {
                TAG_EVENT => match event::record_from_bytes(body) {
                    Ok(r) if body.len() == std::mem::size_of::<trace_common::Event>() => {
                        Frame::Event(Box::new(r))
                    }
                    _ => {
                        return self.corrupt(start, format!("event frame of {} bytes", body.len()));
                    }
                },
                TAG_STACK => match serde_json::from_slice(body) {
                    Ok(s) => Frame::Stack(s),
                    Err(e) => {
                        return self.corrupt(start, format!("stack frame: {e}"));
                    }
                },
                TAG_LOST => match serde_json::from_slice(body) {
                    Ok(l) => Frame::Lost(l),
                    Err(e) => {
                        return self.corrupt(start, format!("lost frame: {e}"));
                    }
                },
                TAG_DROPS => match serde_json::from_slice(body) {
                    Ok(d) => Frame::Drops(d),
                    Err(e) => {
                        return self.corrupt(start, format!("drops frame: {e}"));
                    }
                },
                TAG_GAP => match serde_json::from_slice(body) {
                    Ok(g) => Frame::Gap(g),
                    Err(e) => {
                        return self.corrupt(start, format!("gap frame: {e}"));
                    }
                },
                TAG_IDENTITY => match serde_json::from_slice(body) {
                    Ok(i) => Frame::Identity(i),
                    Err(e) => {
                        return self.corrupt(start, format!("identity frame: {e}"));
                    }
                },
                _ => {
                    self.unknown_frames += 1;
                    continue;
                }
            };
            return Some(frame);
        }
    }
}

/// A whole recording read into memory: decoded events, stacks, losses, and
/// what was wrong with it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub header: Header,
    pub events: Vec<Event>,
    pub stacks: BTreeMap<u32, Stack>,
    pub lost: BTreeMap<String, u64>,
    pub drops: Drops,
    /// Blind gaps, in order.
    pub gaps: Vec<Gap>,
    /// Who each VM belongs to, as read when it was created.
    pub identities: Vec<VmIdentity>,
    /// Records that did not decode (unknown hook id, ...).
    pub undecodable: u64,
    pub damage: Option<Damage>,
    pub unknown_frames: u64,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let mut r = Reader::open(path)?;
    let mut l = Loaded::default();
    while let Some(f) = r.next_frame() {
        match f {
            Frame::Event(rec) => match Event::decode(&rec) {
                Ok(e) => l.events.push(e),
                Err(_) => l.undecodable += 1,
            },
            Frame::Stack(s) => {
                l.stacks.insert(s.id, s);
            }
            Frame::Lost(x) => l.lost = x,
            Frame::Drops(d) => l.drops = d,
            Frame::Gap(g) => l.gaps.push(g),
            Frame::Identity(i) => l.identities.push(i),
        }
    }
    l.header = r.header.clone();
    l.damage = r.damage.clone();
    l.unknown_frames = r.unknown_frames;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            abi_version: trace_common::ABI_VERSION,
            kvscope_version: "test".into(),
            kernel_release: "6.12.0-test".into(),
            ..Header::default()
        }
    }

    fn rec(i: u64) -> trace_common::Event {
        let mut e = trace_common::Event::ZERO;
        e.ts_ns = 1000 + i;
        e.hook = trace_common::HookId::KvmPutKvm as u16;
        e.kvm = 0xffff_0000 + i;
        e.known = trace_common::known::KVM;
        e
    }

    fn sample(n: u64) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for i in 0..n {
            w.event(&rec(i)).unwrap();
        }
        w.stack(&Stack {
            id: 7,
            ips: vec![1, 2],
            symbols: vec!["a+0x1".into(), "b+0x2".into()],
        })
        .unwrap();
        w.into_inner()
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<(Vec<Frame>, Option<Damage>)> {
        let mut r = Reader::new(bytes)?;
        let mut v = Vec::new();
        while let Some(f) = r.next_frame() {
            v.push(f);
        }
        Ok((v, r.damage))
    }

    #[test]
    fn round_trip() {
        let (frames, damage) = read_all(&sample(3)).unwrap();
        assert_eq!(damage, None);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[1], Frame::Event(Box::new(rec(1))));
        assert!(matches!(&frames[3], Frame::Stack(s) if s.id == 7));
    }

    #[test]
    fn drops_frames_round_trip() {
        let mut d = Drops::default();
        d.stack_id_failed.insert("kvm_put_kvm".into(), 3);
        d.watched_added = 9000;
        d.watched_evicted = 808;
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.event(&rec(0)).unwrap();
        w.drops(&d).unwrap();
        let (frames, damage) = read_all(&w.into_inner()).unwrap();
        assert_eq!(damage, None);
        assert_eq!(frames[1], Frame::Drops(d));
    }

    #[test]
    fn gap_frames_round_trip_and_say_when() {
        let g = Gap {
            from_ns: 2_500_000_000,
            to_ns: 8_100_000_000,
            why: "module kvm unloaded, module kvm loaded".into(),
        };
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.event(&rec(0)).unwrap();
        w.gap(&g).unwrap();
        let (frames, damage) = read_all(&w.into_inner()).unwrap();
        assert_eq!(damage, None);
        assert_eq!(frames[1], Frame::Gap(g.clone()));
        assert_eq!(
            g.summary(500_000_000),
            "blind from 2.000 s to 7.600 s (5600 ms): module kvm unloaded, module kvm loaded"
        );
    }

    #[test]
    fn truncation_anywhere_keeps_every_whole_frame() {
        let full = sample(5);
        let header_len = 16 + serde_json::to_vec(&header()).unwrap().len();
        let frame_len = 5 + 128 + 4;
        for cut in header_len..full.len() {
            let (frames, damage) = read_all(&full[..cut]).unwrap();
            let whole = (cut - header_len) / frame_len;
            assert_eq!(
                frames.len(),
                whole.min(5) + usize::from(cut == full.len()),
                "cut {cut}"
            );
            if !(cut - header_len).is_multiple_of(frame_len) {
                assert!(
                    matches!(damage, Some(Damage::Truncated { .. })),
                    "cut {cut}"
                );
            } else {
                assert_eq!(damage, None, "cut {cut} on a boundary");
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_checksum() {
        let mut b = sample(3);
        let header_len = 16 + serde_json::to_vec(&header()).unwrap().len();
        b[header_len + 5 + 137 + 20] ^= 0x40; // inside the second event
        let (frames, damage) = read_all(&b).unwrap();
        assert_eq!(frames.len(), 1);
        match damage {
            Some(Damage::Corrupt { offset, why }) => {
                assert_eq!(offset, (header_len + 137) as u64);
                assert!(why.contains("checksum"));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn empty_foreign_and_future_files_are_refused_clearly() {
        let err = |b: &[u8]| Reader::new(b).err().unwrap().to_string();
        assert!(err(b"").contains("empty"));
        assert!(err(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").contains("not a kvscope recording"));
        let mut future = sample(1);
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(err(&future).contains("format version 2, this kvscope reads version 1"));
        // One flipped bit in the version field is damage, not version skew.
        let mut flipped = future.clone();
        flipped[10] = 0xff;
        let e = err(&flipped);
        assert!(
            e.contains("damaged recording header") && !e.contains("use a kvscope of the version"),
            "{e}"
        );
        let mut h = header();
        h.abi_version = 99;
        let w = Writer::new(Vec::new(), &h).unwrap().into_inner();
        assert!(err(&w).contains("ABI version 99"));
        assert!(err(&sample(1)[..12]).contains("cut short"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz of the reader (the cargo-fuzz target goes further).
        let base = sample(4);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = base.clone();
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
            let cut = ((x >> 16) as usize) % (b.len() + 1);
            let _ = read_all(&b[..cut]);
        }
    }
}

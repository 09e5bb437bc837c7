//! A JSON-lines file with size-based rotation (file, file.1, ... file.N).
use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::recording::private_file::{self, Open};

pub struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// File mode of the file and its rotations (see `private_file`).
    mode: u32,
}

impl Rotating {
    pub fn open(path: &Path, max_bytes: u64, keep: u32, mode: u32) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = private_file::open(path, Open::Append, mode)
            .with_context(|| format!("opening findings file {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
            keep,
            mode,
        })
    }

    pub fn write<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(v)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.file.flush()?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = private_file::open(&self.path, Open::Append, self.mode)?;
        }
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("kvscope-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("f.jsonl");
        let mut r = Rotating::open(&p, 100, 2, private_file::PRIVATE).unwrap();
        for i in 0..20 {
            r.write(&serde_json::json!({ "i": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }))
                .unwrap();
        }
        assert!(p.exists() && dir.join("f.jsonl.1").exists() && dir.join("f.jsonl.2").exists());
        assert!(!dir.join("f.jsonl.3").exists());
        let last = std::fs::read_to_string(&p).unwrap();
        assert!(last.lines().last().unwrap().contains("\"i\":19"));
        for f in ["f.jsonl", "f.jsonl.1", "f.jsonl.2"] {
            use std::os::unix::fs::MetadataExt as _;
            let mode = std::fs::metadata(dir.join(f)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}: findings name kernel addresses");
            let t = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(t.len() <= 100, "{f} is {} bytes", t.len());
            for l in t.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

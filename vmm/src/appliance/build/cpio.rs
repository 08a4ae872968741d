//! A writer for the `newc` cpio format the Linux kernel unpacks as an initramfs. Entries get
//! fixed owners and timestamps so the same inputs give the same bytes (and the same hash).

use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Link target.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Streams entries into a newc archive; call [`CpioWriter::finish`] to write the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_inode: 1,
        }
    }

    /// Appends one entry named `name` (relative, no leading `/`).
    pub fn entry(&mut self, name: &str, entry: &Entry) -> io::Result<()> {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { mode } => (0o040000 | mode, &[], (0, 0)),
            Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
            Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
        };
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if matches!(entry, Entry::Dir { .. }) {
            2
        } else {
            1
        };
        self.header(name, inode, mode, nlink, data.len(), rdev)?;
        self.write_padded(data)
    }

    fn header(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {devmajor:08x}{devminor:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            devmajor = 0,
            devminor = 0,
            rmajor = rdev.0,
            rminor = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.write_raw(header.as_bytes())?;
        self.write_raw(name.as_bytes())?;
        self.write_raw(&[0])?;
        self.pad()
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.offset % 4) as usize) % 4;
        self.write_raw(&[0u8; 3][..padding])
    }

    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_raw(data)?;
        self.pad()
    }

    /// Writes the `TRAILER!!!` record and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_with_host_cpio() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.entry("etc", &Entry::Dir { mode: 0o755 }).unwrap();
        writer
            .entry(
                "etc/motd",
                &Entry::File {
                    mode: 0o644,
                    data: b"hello\n".to_vec(),
                },
            )
            .unwrap();
        writer
            .entry(
                "motd",
                &Entry::Symlink {
                    target: "etc/motd".into(),
                },
            )
            .unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        // The member data sits after the name, 4-byte aligned.
        let pos = bytes.windows(6).position(|w| w == b"hello\n").unwrap();
        assert_eq!(pos % 4, 0);
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            println!("SKIPPED: archive_lists_with_host_cpio: cpio not installed");
            return;
        };
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "etc\netc/motd\nmotd\n"
        );
    }
}

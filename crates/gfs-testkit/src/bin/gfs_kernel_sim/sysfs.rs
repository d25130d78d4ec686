//! The files of `/sys/fs/gfs2/<table>/` as Linux 6.1 lays them out, and the kernel's number
//! parsers whose quirks decide which writes fail with EINVAL.

/// A file of one filesystem's sysfs directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SysFile {
    // <table>/
    Id,
    Fsname,
    Uuid,
    Status,
    /// `<table>/withdraw`: writing 1 withdraws the filesystem.
    Withdraw,
    // <table>/lock_module/
    ProtoName,
    Block,
    /// `lock_module/withdraw`: the withdraw acknowledgement.
    WithdrawAck,
    Jid,
    First,
    FirstDone,
    Recover,
    RecoverDone,
    RecoverStatus,
}

/// Where a file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Table,
    LockModule,
}

impl SysFile {
    pub const ALL: [SysFile; 14] = [
        SysFile::Id,
        SysFile::Fsname,
        SysFile::Uuid,
        SysFile::Status,
        SysFile::Withdraw,
        SysFile::ProtoName,
        SysFile::Block,
        SysFile::WithdrawAck,
        SysFile::Jid,
        SysFile::First,
        SysFile::FirstDone,
        SysFile::Recover,
        SysFile::RecoverDone,
        SysFile::RecoverStatus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SysFile::Id => "id",
            SysFile::Fsname => "fsname",
            SysFile::Uuid => "uuid",
            SysFile::Status => "status",
            SysFile::Withdraw | SysFile::WithdrawAck => "withdraw",
            SysFile::ProtoName => "proto_name",
            SysFile::Block => "block",
            SysFile::Jid => "jid",
            SysFile::First => "first",
            SysFile::FirstDone => "first_done",
            SysFile::Recover => "recover",
            SysFile::RecoverDone => "recover_done",
            SysFile::RecoverStatus => "recover_status",
        }
    }

    /// For the timeline: `lock_module` files by their name alone, as the daemon knows them.
    pub fn label(self) -> String {
        match self.dir() {
            Dir::LockModule => self.name().to_owned(),
            Dir::Table => format!("../{}", self.name()),
        }
    }

    pub fn dir(self) -> Dir {
        match self {
            SysFile::Id | SysFile::Fsname | SysFile::Uuid | SysFile::Status | SysFile::Withdraw => {
                Dir::Table
            }
            _ => Dir::LockModule,
        }
    }

    /// The mode the kernel gives it (fs/gfs2/sys.c).
    pub fn mode(self) -> u16 {
        match self {
            SysFile::Status => 0o400,
            SysFile::Recover => 0o600,
            SysFile::Withdraw
            | SysFile::Block
            | SysFile::WithdrawAck
            | SysFile::Jid
            | SysFile::First => 0o644,
            _ => 0o444,
        }
    }

    /// Has a show method: opening for reading works.
    pub fn readable(self) -> bool {
        self != SysFile::Recover
    }

    /// Has a store method: opening for writing works.
    pub fn writable(self) -> bool {
        matches!(
            self,
            SysFile::Withdraw
                | SysFile::Block
                | SysFile::WithdrawAck
                | SysFile::Jid
                | SysFile::First
                | SysFile::Recover
        )
    }

    /// Its index among [`SysFile::ALL`] (inode numbering).
    pub fn index(self) -> usize {
        SysFile::ALL
            .iter()
            .position(|f| *f == self)
            .unwrap_or_default()
    }

    pub fn in_dir(dir: Dir) -> impl Iterator<Item = SysFile> {
        SysFile::ALL.into_iter().filter(move |f| f.dir() == dir)
    }

    pub fn lookup(dir: Dir, name: &str) -> Option<SysFile> {
        SysFile::in_dir(dir).find(|f| f.name() == name)
    }
}

/// `kstrtoint(buf, 0, &v)`: an optional sign, then `0x` hex, `0` octal or decimal digits, and
/// at most one trailing newline; nothing else. EINVAL, or ERANGE when it does not fit.
pub fn kstrtoint(text: &str) -> Result<i32, i32> {
    let s = text.strip_suffix('\n').unwrap_or(text);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(libc::EINVAL);
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| libc::ERANGE)?;
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    i32::try_from(value).map_err(|_| libc::ERANGE)
}

/// The leading decimal number as `sscanf(buf, "%u")` / `"%d"` reads it: white space skipped, a
/// `-` only for `%d`, then at least one digit; whatever follows the digits is ignored. Values
/// wrap to 32 bits as the kernel's do.
fn sscanf(text: &str, signed: bool) -> Option<i64> {
    let s = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) if signed => (true, rest),
        _ => (false, s),
    };
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits.bytes() {
        v = v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
    }
    let v = if negative { v.wrapping_neg() } else { v };
    Some(if signed {
        i64::from(v as u32 as i32)
    } else {
        i64::from(v as u32)
    })
}

/// `sscanf(buf, "%u", &v) == 1`.
pub fn sscanf_u(text: &str) -> Option<u32> {
    sscanf(text, false).map(|v| v as u32)
}

/// `sscanf(buf, "%d", &v) == 1`.
pub fn sscanf_d(text: &str) -> Option<i32> {
    sscanf(text, true).map(|v| v as i32)
}

/// `EBUSY` for 16, `errno 999` for what nix does not know.
pub fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {errno}")
    } else {
        format!("{e:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kstrtoint_is_strict() {
        assert_eq!(kstrtoint("1\n"), Ok(1));
        assert_eq!(kstrtoint("0"), Ok(0));
        assert_eq!(kstrtoint("-1\n"), Ok(-1));
        assert_eq!(kstrtoint("+7"), Ok(7));
        assert_eq!(kstrtoint("0x10"), Ok(16));
        assert_eq!(kstrtoint("010"), Ok(8));
        assert_eq!(kstrtoint("1\n\n"), Err(libc::EINVAL));
        assert_eq!(kstrtoint(" 1"), Err(libc::EINVAL));
        assert_eq!(kstrtoint("1x"), Err(libc::EINVAL));
        assert_eq!(kstrtoint(""), Err(libc::EINVAL));
        assert_eq!(kstrtoint("99999999999"), Err(libc::ERANGE));
    }

    #[test]
    fn sscanf_takes_the_leading_number() {
        assert_eq!(sscanf_u("3\n"), Some(3));
        assert_eq!(sscanf_u("  3abc"), Some(3));
        assert_eq!(sscanf_u("-1"), None);
        assert_eq!(sscanf_u("x"), None);
        assert_eq!(sscanf_d("-22\n"), Some(-22));
        assert_eq!(sscanf_d("4"), Some(4));
        assert_eq!(sscanf_d("-"), None);
    }

    #[test]
    fn layout() {
        assert_eq!(SysFile::in_dir(Dir::LockModule).count(), 9);
        assert_eq!(
            SysFile::lookup(Dir::Table, "withdraw"),
            Some(SysFile::Withdraw)
        );
        assert_eq!(
            SysFile::lookup(Dir::LockModule, "withdraw"),
            Some(SysFile::WithdrawAck)
        );
        assert_eq!(SysFile::Recover.mode(), 0o600);
        assert!(!SysFile::Recover.readable());
        assert!(!SysFile::FirstDone.writable());
        assert_eq!(errno_name(libc::EBUSY), "EBUSY");
    }
}

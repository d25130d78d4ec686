//! dlm_controld's client protocol on its `dlmc_sock` socket, as far as a filesystem daemon uses
//! it: register a lockspace, unregister it, and say that this node has blocked the filesystem
//! against a failed node (the "fs control" handshake of cluster-3's gfs_controld).
//!
//! Pure: bytes in, values out. Every message is one fixed 96-byte `struct dlmc_header`
//! (dlm's `dlm_controld/dlm_controld.h`), optionally followed by `len - 96` bytes of payload,
//! which none of these commands carry. The fields are C `int`s in the host's byte order
//! (the socket is local), in this order:
//!
//! | offset | field | use here |
//! |---|---|---|
//! | 0 | `magic` | [`MAGIC`] |
//! | 4 | `version` | [`VERSION`]; dlm_controld checks only the upper 16 bits |
//! | 8 | `command` | [`Command`] |
//! | 12 | `option` | replies to FS_NOTIFIED: the node id asked about |
//! | 16 | `len` | whole message length, header included |
//! | 20 | `data` | requests: FS_NOTIFIED's node id; replies: the result (0 or `-errno`) |
//! | 24 | `flags` | 0 |
//! | 28 | `unused` | 0 |
//! | 32 | `name[64]` | the lockspace name, NUL-padded, no terminator when 64 bytes long |
//!
//! Replies (FS_REGISTER and FS_NOTIFIED only; FS_UNREGISTER has none) come asynchronously on the
//! same connection, with the request's command and name.

/// `DLMC_MAGIC`.
pub const MAGIC: u32 = 0xD13C_D13C;
/// `DLMC_VERSION`: major 1, minor 1.
pub const VERSION: u32 = 0x0001_0001;
/// `sizeof(struct dlmc_header)`.
pub const HEADER_LEN: usize = 96;
/// `DLM_LOCKSPACE_LEN`: the name field's size, and the longest lockspace name.
pub const NAME_LEN: usize = 64;
/// The abstract socket name dlm_controld listens on (`DLMC_SOCK_PATH`, with a leading NUL).
pub const SOCKET_NAME: &str = "dlmc_sock";
/// The longest payload a reply may announce before it is taken as garbage (dlm_controld's
/// largest, a debug dump, is 1 MiB).
pub const MAX_EXTRA: usize = 1 << 20;

const NAME_OFFSET: usize = 32;

/// The commands a filesystem daemon sends (`DLMC_CMD_FS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    /// `DLMC_CMD_FS_REGISTER` (7): DLM recovery of this lockspace waits for FS_NOTIFIED.
    FsRegister,
    /// `DLMC_CMD_FS_UNREGISTER` (8): no reply.
    FsUnregister,
    /// `DLMC_CMD_FS_NOTIFIED` (9): this node has blocked the filesystem against node `data`.
    FsNotified,
    /// Anything else (dlm_controld never sends one on this connection).
    Other(u32),
}

impl Command {
    pub fn code(self) -> u32 {
        match self {
            Command::FsRegister => 7,
            Command::FsUnregister => 8,
            Command::FsNotified => 9,
            Command::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> Command {
        match code {
            7 => Command::FsRegister,
            8 => Command::FsUnregister,
            9 => Command::FsNotified,
            other => Command::Other(other),
        }
    }
}

/// One `struct dlmc_header`, magic and version implied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub command: Command,
    pub option: u32,
    /// Length of the whole message, header included.
    pub len: u32,
    pub data: i32,
    pub flags: i32,
    /// The lockspace name: at most [`NAME_LEN`] bytes, no NUL.
    pub name: Vec<u8>,
}

/// Why bytes are not a [`Header`], or a name cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlmcError {
    /// Fewer than [`HEADER_LEN`] bytes: wait for more.
    Incomplete,
    BadMagic(u32),
    /// A different major version.
    BadVersion(u32),
    /// `len` is below the header size or announces more than [`MAX_EXTRA`] payload bytes.
    BadLength(u32),
    /// Longer than [`NAME_LEN`] bytes, empty, or with a NUL.
    BadName,
}

impl std::fmt::Display for DlmcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DlmcError::Incomplete => write!(f, "fewer than {HEADER_LEN} bytes"),
            DlmcError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            DlmcError::BadVersion(v) => write!(f, "unsupported version {v:#010x}"),
            DlmcError::BadLength(l) => write!(f, "bad message length {l}"),
            DlmcError::BadName => write!(
                f,
                "lockspace name must be 1 to {NAME_LEN} bytes without NUL"
            ),
        }
    }
}

impl std::error::Error for DlmcError {}

impl Header {
    /// A request without payload.
    pub fn request(command: Command, name: &str, data: i32) -> Result<Header, DlmcError> {
        let name = name.as_bytes();
        if name.is_empty() || name.len() > NAME_LEN || name.contains(&0) {
            return Err(DlmcError::BadName);
        }
        Ok(Header {
            command,
            option: 0,
            len: HEADER_LEN as u32,
            data,
            flags: 0,
            name: name.to_vec(),
        })
    }

    pub fn fs_register(name: &str) -> Result<Header, DlmcError> {
        Header::request(Command::FsRegister, name, 0)
    }

    pub fn fs_unregister(name: &str) -> Result<Header, DlmcError> {
        Header::request(Command::FsUnregister, name, 0)
    }

    /// dlm_controld takes the node id from `data` and echoes it in the reply's `option`.
    pub fn fs_notified(name: &str, nodeid: u32) -> Result<Header, DlmcError> {
        Header::request(Command::FsNotified, name, nodeid as i32)
    }

    /// A reply as dlm_controld builds it: the result in `data`, `option` as given.
    pub fn reply(command: Command, name: &[u8], result: i32, option: u32) -> Header {
        let mut name = name.to_vec();
        name.truncate(NAME_LEN);
        Header {
            command,
            option,
            len: HEADER_LEN as u32,
            data: result,
            flags: 0,
            name,
        }
    }

    /// The name as text (lossy: dlm_controld echoes what it was sent).
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Payload bytes after the header.
    pub fn extra_len(&self) -> usize {
        (self.len as usize).saturating_sub(HEADER_LEN)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let words: [u32; 8] = [
            MAGIC,
            VERSION,
            self.command.code(),
            self.option,
            self.len,
            self.data as u32,
            self.flags as u32,
            0,
        ];
        for (i, word) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let n = self.name.len().min(NAME_LEN);
        out[NAME_OFFSET..NAME_OFFSET + n].copy_from_slice(&self.name[..n]);
        out
    }

    /// Reads a header from the start of `bytes` (any payload after it is left to the caller:
    /// see [`Header::extra_len`] and [`split_frame`]).
    pub fn decode(bytes: &[u8]) -> Result<Header, DlmcError> {
        if bytes.len() < HEADER_LEN {
            return Err(DlmcError::Incomplete);
        }
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
            u32::from_ne_bytes(b)
        };
        let magic = word(0);
        if magic != MAGIC {
            return Err(DlmcError::BadMagic(magic));
        }
        let version = word(1);
        if version & 0xFFFF_0000 != VERSION & 0xFFFF_0000 {
            return Err(DlmcError::BadVersion(version));
        }
        let len = word(4);
        if (len as usize) < HEADER_LEN || len as usize - HEADER_LEN > MAX_EXTRA {
            return Err(DlmcError::BadLength(len));
        }
        let raw = &bytes[NAME_OFFSET..NAME_OFFSET + NAME_LEN];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        Ok(Header {
            command: Command::from_code(word(2)),
            option: word(3),
            len,
            data: word(5) as i32,
            flags: word(6) as i32,
            name: raw[..end].to_vec(),
        })
    }
}

/// The first whole message in `buf`: its header and how many bytes it takes (header plus
/// payload). `None` until a whole message is there; `Err` when the stream is not dlmc (the
/// connection cannot be resynchronised and should be dropped).
pub fn split_frame(buf: &[u8]) -> Option<Result<(Header, usize), DlmcError>> {
    match Header::decode(buf) {
        Err(DlmcError::Incomplete) => None,
        Err(e) => Some(Err(e)),
        Ok(header) => {
            let total = HEADER_LEN + header.extra_len();
            (buf.len() >= total).then_some(Ok((header, total)))
        }
    }
}

/// What a reply says, for a filesystem daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// FS_REGISTER's answer: 0, or `-EOPNOTSUPP` when dlm_controld runs without
    /// `enable_fscontrol=1`.
    Registered { name: String, result: i32 },
    /// FS_NOTIFIED's answer: 0 (recorded, or the node is not in the lockspace), `-EAGAIN`
    /// (dlm_controld has not processed the node's failure yet: ask again), `-ESRCH` (unknown
    /// node), `-ENOENT` (unknown lockspace).
    Notified {
        name: String,
        nodeid: u32,
        result: i32,
    },
    /// Any other command.
    Other { command: u32, name: String },
}

impl Reply {
    pub fn from_header(h: &Header) -> Reply {
        match h.command {
            Command::FsRegister => Reply::Registered {
                name: h.name_str(),
                result: h.data,
            },
            Command::FsNotified => Reply::Notified {
                name: h.name_str(),
                nodeid: h.option,
                result: h.data,
            },
            other => Reply::Other {
                command: other.code(),
                name: h.name_str(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_struct_dlmc_header() {
        let h = Header::fs_notified("fs1", 3).unwrap();
        let b = h.encode();
        let word = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), 0xD13C_D13C);
        assert_eq!(word(1), 0x0001_0001);
        assert_eq!(word(2), 9, "FS_NOTIFIED");
        assert_eq!(word(3), 0, "option");
        assert_eq!(word(4), 96, "len");
        assert_eq!(word(5), 3, "data = nodeid");
        assert_eq!(word(6), 0);
        assert_eq!(word(7), 0);
        assert_eq!(&b[32..35], b"fs1");
        assert!(b[35..].iter().all(|&x| x == 0));
        assert_eq!(Command::FsRegister.code(), 7);
        assert_eq!(Command::FsUnregister.code(), 8);
    }

    #[test]
    fn round_trip_and_replies() {
        for h in [
            Header::fs_register("a").unwrap(),
            Header::fs_unregister(&"x".repeat(64)).unwrap(),
            Header::fs_notified("fs.1-b_c", 4_000_000_000).unwrap(),
            Header::reply(Command::FsNotified, b"fs1", -11, 7),
        ] {
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
        let r = Header::reply(Command::FsNotified, b"fs1", -11, 7);
        assert_eq!(
            Reply::from_header(&r),
            Reply::Notified {
                name: "fs1".into(),
                nodeid: 7,
                result: -11
            }
        );
        let r = Header::reply(Command::FsRegister, b"fs1", -95, 0);
        assert_eq!(
            Reply::from_header(&r),
            Reply::Registered {
                name: "fs1".into(),
                result: -95
            }
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(Header::fs_register(""), Err(DlmcError::BadName));
        assert_eq!(
            Header::fs_register(&"x".repeat(65)),
            Err(DlmcError::BadName)
        );
        assert_eq!(Header::fs_register("a\0b"), Err(DlmcError::BadName));
        let good = Header::fs_register("fs1").unwrap().encode();
        assert_eq!(Header::decode(&good[..95]), Err(DlmcError::Incomplete));
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(Header::decode(&bad), Err(DlmcError::BadMagic(_))));
        let mut bad = good;
        bad[4..8].copy_from_slice(&0x0002_0001u32.to_ne_bytes());
        assert!(matches!(
            Header::decode(&bad),
            Err(DlmcError::BadVersion(_))
        ));
        // A minor version change is accepted, as dlm_controld does.
        let mut minor = good;
        minor[4..8].copy_from_slice(&0x0001_0005u32.to_ne_bytes());
        assert!(Header::decode(&minor).is_ok());
        let mut short = good;
        short[16..20].copy_from_slice(&95u32.to_ne_bytes());
        assert_eq!(Header::decode(&short), Err(DlmcError::BadLength(95)));
    }

    #[test]
    fn frames_skip_payload_and_wait_for_whole_messages() {
        let mut with_extra = Header::reply(Command::FsRegister, b"fs1", 0, 0);
        with_extra.len = 100;
        let mut stream = with_extra.encode().to_vec();
        stream.extend_from_slice(&[1, 2, 3]);
        assert_eq!(split_frame(&stream), None, "payload incomplete");
        stream.push(4);
        stream.extend_from_slice(&Header::fs_register("b").unwrap().encode()[..10]);
        let (h, used) = split_frame(&stream).unwrap().unwrap();
        assert_eq!((h.name_str(), used), ("fs1".to_owned(), 100));
        assert_eq!(split_frame(&stream[used..]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = split_frame(&bytes);
            if let Ok(h) = Header::decode(&bytes) {
                let _ = Reply::from_header(&h);
                proptest::prop_assert_eq!(Header::decode(&h.encode()).map(|d| d.name), Ok(h.name.clone()));
            }
        }

        #[test]
        fn requests_round_trip(name in "[A-Za-z0-9_.-]{1,64}", nodeid in proptest::num::u32::ANY) {
            let h = Header::fs_notified(&name, nodeid).unwrap();
            proptest::prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }
}

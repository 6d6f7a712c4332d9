use xxhash_rust::xxh3::xxh3_64;

/// The points per unit of weight used by [`HashScheme::default`].
///
/// Chosen to meet a peak/mean load of at most 1.10 over 100 nodes without bounded loads
/// (see the crate README for the measured table).
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 2048;

/// nginx places 160 points per unit of weight; the ketama mode must do the same.
const KETAMA_POINTS_PER_WEIGHT: u32 = 160;

/// How keys and nodes are hashed to positions on the ring.
///
/// Both schemes map keys and points to `u64` positions; a key belongs to the node owning the
/// first point at or after the key's position, wrapping around past the largest point.
/// A point's position is its hash below with the low 16 bits set to one (the ring keeps the
/// point's owner in those bits, so a point is 8 bytes). Where points share a position the
/// one whose node id sorts first (byte-wise) owns it.
///
/// ```
/// use tower_hashring::HashScheme;
///
/// let fast = HashScheme::default();
/// assert_eq!(fast, HashScheme::Xxh3 { points_per_weight: 2048 });
/// // Same input, same position, in every process and on every machine.
/// assert_eq!(fast.key_position(b"user-42"), fast.key_position(b"user-42"));
/// assert_eq!(HashScheme::Ketama.key_position(b"a") >> 32, 0xe8b7be43);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashScheme {
    /// The default: XXH3-64 (the xxHash specification's `XXH3_64bits`).
    ///
    /// - key position = `XXH3_64bits(key bytes)` (seed 0);
    /// - point `i` of node `id`, for `i` in `0 .. points_per_weight × weight`, is at
    ///   `XXH3_64bits(le32(i) ‖ UTF-8 bytes of id) | 0xffff`: the point number as 4 little-endian
    ///   bytes, then the id. (Not the id with seed `i`: XXH3 mixes a seed linearly into
    ///   short inputs, so the points of ids such as `n0` and `n1` would coincide.)
    ///
    /// Raising a node's weight only adds points, so it only pulls keys toward that node.
    Xxh3 {
        /// Points per unit of weight.
        points_per_weight: u32,
    },
    /// Compatible with nginx's `hash $key consistent` (and `pingora-ketama`).
    ///
    /// The node id is nginx's `server` string `host:port`, split at its last `:`
    /// (an id without `:` is all host, empty port). With `crc32` the IEEE CRC-32 (zlib's),
    /// point `j` (of `160 × weight`) is `crc32(host ‖ 0x00 ‖ port ‖ le32(point j−1))`,
    /// with point −1 taken as 0; a key's hash is `crc32(key)`. Positions are these 32-bit
    /// values shifted into the high half of a `u64`, which keeps their order (a point's low
    /// half is then `0xffff`, which changes no owner).
    Ketama,
}

impl Default for HashScheme {
    fn default() -> Self {
        HashScheme::Xxh3 {
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
        }
    }
}

impl HashScheme {
    /// The ring position of a key.
    #[inline]
    pub fn key_position(&self, key: &[u8]) -> u64 {
        match self {
            HashScheme::Xxh3 { .. } => xxh3_64(key),
            HashScheme::Ketama => u64::from(crc32fast::hash(key)) << 32,
        }
    }

    /// How many points a node of this weight places on the ring.
    pub fn points_for(&self, weight: u32) -> u64 {
        let per_weight = match self {
            HashScheme::Xxh3 { points_per_weight } => *points_per_weight,
            HashScheme::Ketama => KETAMA_POINTS_PER_WEIGHT,
        };
        u64::from(per_weight) * u64::from(weight)
    }

    /// Appends the positions of a node's points to `out`.
    pub(crate) fn push_points(&self, id: &str, weight: u32, out: &mut Vec<u64>) {
        let count = self.points_for(weight);
        match self {
            HashScheme::Xxh3 { .. } => {
                let mut input = vec![0; 4];
                input.extend_from_slice(id.as_bytes());
                // `count` fits in u32: rings are capped at MAX_POINTS (2^24) points.
                for i in 0..count as u32 {
                    input[..4].copy_from_slice(&i.to_le_bytes());
                    out.push(xxh3_64(&input));
                }
            }
            HashScheme::Ketama => {
                let (host, port) = match id.rfind(':') {
                    Some(colon) => (&id[..colon], &id[colon + 1..]),
                    None => (id, ""),
                };
                let mut base = crc32fast::Hasher::new();
                base.update(host.as_bytes());
                base.update(&[0]);
                base.update(port.as_bytes());
                let mut previous = 0u32;
                for _ in 0..count {
                    let mut point = base.clone();
                    point.update(&previous.to_le_bytes());
                    previous = point.finalize();
                    out.push(u64::from(previous) << 32);
                }
            }
        }
    }
}

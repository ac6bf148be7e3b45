//! A short string copied inline, so handing an event over allocates nothing.
//!
//! The hot path's events carry a key id (20 bytes) and a limit name (at most
//! 64 bytes). Copying them into a fixed buffer costs a `memcpy`; a `String`
//! would cost an allocation on the check path and a free on the pipeline's
//! thread (which also sends the allocator's slow path back and forth between
//! threads). A string longer than `N` falls back to the heap.

/// A string of at most `N` bytes kept inline, or a longer one on the heap.
#[derive(Clone)]
pub enum ShortStr<const N: usize> {
    Inline { len: u8, buf: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> ShortStr<N> {
    pub fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if b.len() <= N && b.len() <= usize::from(u8::MAX) {
            let mut buf = [0u8; N];
            buf[..b.len()].copy_from_slice(b);
            ShortStr::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            ShortStr::Heap(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // The bytes came from a `&str`: valid UTF-8 by construction.
            ShortStr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            ShortStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> std::fmt::Debug for ShortStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq for ShortStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for ShortStr<N> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_stay_inline_and_long_ones_go_to_the_heap() {
        let s = ShortStr::<8>::new("per-min");
        assert!(matches!(s, ShortStr::Inline { len: 7, .. }));
        assert_eq!(s.as_str(), "per-min");
        let exact = ShortStr::<8>::new("12345678");
        assert!(matches!(exact, ShortStr::Inline { .. }));
        assert_eq!(exact.as_str(), "12345678");
        let long = ShortStr::<8>::new("per-minute");
        assert!(matches!(long, ShortStr::Heap(_)));
        assert_eq!(long.as_str(), "per-minute");
        assert_eq!(ShortStr::<8>::new("").as_str(), "");
        assert_eq!(ShortStr::<8>::new("é€"), ShortStr::<8>::new("é€"));
        assert_eq!(ShortStr::<4>::new("€€").as_str(), "€€");
    }
}

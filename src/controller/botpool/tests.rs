use super::*;

#[test]
fn backoff_grows_and_is_bounded() {
    let b = crate::backoff::Backoff::new(Duration::from_secs(1), RESYNC);
    let about = |d: Duration, s: u64| {
        (Duration::from_secs(s)..=Duration::from_millis(s * 1100)).contains(&d)
    };
    assert!(about(b.delay(1), 1), "{:?}", b.delay(1));
    assert!(about(b.delay(3), 4), "{:?}", b.delay(3));
    assert_eq!(b.delay(100), RESYNC);
}

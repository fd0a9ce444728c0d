//! Any bytes → decode (with size limits) → planar pixels for 1 and 3 channels → tensor.
//! Must never panic, hang or allocate without bound; decoded pixels must map into [-1, 1].
#![no_main]
use cyclestudio::data::image_io::decode_image_bytes;
use cyclestudio::data::Pixels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode_image_bytes(data) else { return };
    // Keep each case cheap: the limits allow large images, the conversion is linear in pixels.
    if (img.width() as u64) * (img.height() as u64) > 1 << 20 {
        return;
    }
    for channels in [1, 3] {
        let (pixels, alpha) = Pixels::from_image(&img, channels).expect("1 and 3 channels are supported");
        assert_eq!(pixels.data.len(), channels * pixels.width * pixels.height);
        if let Some(a) = &alpha {
            assert_eq!(a.len(), pixels.width * pixels.height);
        }
        let t = pixels.to_tensor(&candle_core::Device::Cpu).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x) || x.is_nan()), "pixel outside [-1, 1]");
        let back = pixels.to_image(alpha.as_deref());
        assert_eq!((back.width() as usize, back.height() as usize), (pixels.width, pixels.height));
    }
});

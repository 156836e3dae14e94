//! The platform's model families: their path segment, id field and pricing dimensions.

/// A model family of the platform (`/v1/{family}/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Sora 2 (`/v1/sora`).
    Sora,
    /// Veo 3 (`/v1/veo`).
    Veo,
    /// Kling 1.6–3.0 and Motion Control (`/v1/kling`).
    Kling,
    /// Kling O1 video (`/v1/kling/o1-video`).
    KlingO1Video,
    /// Kling O3 video (`/v1/kling/o3-video`).
    KlingO3Video,
    /// Kling O1 photo (`/v1/kling/o1-photo`).
    KlingO1Photo,
    /// Kling O3 photo (`/v1/kling/o3-photo`).
    KlingO3Photo,
    /// Nano Banana (`/v1/gemini`).
    Gemini,
    /// ChatGPT Images (`/v1/chatgpt-images`).
    ChatgptImages,
    /// Seedance (`/v1/seedance`), known only second-hand: validated loosely.
    Seedance,
}

// === impl Family ===

impl Family {
    /// Every family, longest path first so prefix matching picks `kling/o1-video` over `kling`.
    pub const ALL: [Family; 10] = [
        Family::KlingO1Video,
        Family::KlingO3Video,
        Family::KlingO1Photo,
        Family::KlingO3Photo,
        Family::ChatgptImages,
        Family::Seedance,
        Family::Gemini,
        Family::Kling,
        Family::Sora,
        Family::Veo,
    ];

    /// Path segment(s) after `/v1/`; also the key of this family in `[pricing]`.
    pub const fn path(self) -> &'static str {
        match self {
            Family::Sora => "sora",
            Family::Veo => "veo",
            Family::Kling => "kling",
            Family::KlingO1Video => "kling/o1-video",
            Family::KlingO3Video => "kling/o3-video",
            Family::KlingO1Photo => "kling/o1-photo",
            Family::KlingO3Photo => "kling/o3-photo",
            Family::Gemini => "gemini",
            Family::ChatgptImages => "chatgpt-images",
            Family::Seedance => "seedance",
        }
    }

    /// The family whose path is exactly `s`.
    pub fn from_path(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.path() == s)
    }

    /// Name of the id field in the platform's responses.
    pub const fn id_field(self) -> &'static str {
        match self {
            Family::Gemini | Family::ChatgptImages | Family::Seedance => "task_uuid",
            _ => "generation_id",
        }
    }

    /// Request fields that select the price, in lookup order, with the platform's defaults.
    pub const fn price_dimensions(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Family::Sora => &[("duration", "10")],
            Family::Veo => &[("model", "veo-3-fast")],
            Family::Kling => &[("model", "kling_2.5_turbo"), ("duration", "5")],
            Family::KlingO1Video => &[("duration", "5")],
            Family::KlingO3Video => &[("model", "kling_o3"), ("duration", "5")],
            Family::KlingO1Photo => &[("img_resolution", "2k")],
            Family::KlingO3Photo => &[("img_resolution", "4k")],
            Family::Gemini => &[("model", "standard"), ("quality", "standard")],
            Family::ChatgptImages => &[("model", "default")],
            Family::Seedance => &[("model", "default"), ("duration", "5")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_prefix_order_is_longest_first() {
        for f in Family::ALL {
            assert_eq!(Family::from_path(f.path()), Some(f));
        }
        let kling = Family::ALL.iter().position(|f| *f == Family::Kling).unwrap();
        let o1 = Family::ALL.iter().position(|f| *f == Family::KlingO1Video).unwrap();
        assert!(o1 < kling);
        assert_eq!(Family::from_path("midjourney"), None);
    }

    #[test]
    fn id_fields_follow_the_platform() {
        assert_eq!(Family::Sora.id_field(), "generation_id");
        assert_eq!(Family::KlingO3Photo.id_field(), "generation_id");
        assert_eq!(Family::Gemini.id_field(), "task_uuid");
        assert_eq!(Family::ChatgptImages.id_field(), "task_uuid");
    }
}

"""Search: image and text embeddings, vector indexes, text alignment and enrolment."""

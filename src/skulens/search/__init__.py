"""Search: image and text embeddings, vector indexes, alignment, enrolment and recommendations."""

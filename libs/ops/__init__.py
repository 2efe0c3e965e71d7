"""Operations on the database as a whole: backup and restore of every schema (`python -m libs.ops`)."""

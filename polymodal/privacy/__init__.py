"""Personal data out before anything is fitted, logged or saved: text (Presidio), faces (OpenCV), voices (McAdams).

Sits right after `data/`: it reads tables through `data` and writes anonymized copies that the rest of polymodal
then reads like any other table. Heavy libraries (presidio, spaCy, OpenCV) are imported when first used.
"""

from polymodal.privacy.table import SALT_ENV, PrivacySettings, anonymize_frame, anonymize_table, anonymize_tables

__all__ = ["SALT_ENV", "PrivacySettings", "anonymize_frame", "anonymize_table", "anonymize_tables"]

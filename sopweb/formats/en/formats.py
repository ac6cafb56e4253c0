"""One date format on every page (settings.FORMAT_MODULE_PATH): ISO-like and absolute, so rows line up and read the
same everywhere; `core.templatetags.display.when` adds the relative time on hover."""
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"

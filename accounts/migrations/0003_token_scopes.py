# Tokens get scopes. Tokens made before scopes could do everything their user
# may do; they keep that ("read write admin"), so no script in use today breaks.
# New tokens default to "read write".

import accounts.scopes
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_quota'),
    ]

    operations = [
        migrations.AddField(
            model_name='accesstoken',
            name='scopes',
            field=models.CharField(default='read write admin', max_length=32),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name='accesstoken',
            name='scopes',
            field=models.CharField(default='read write', help_text='What the token may do: read, write, admin (accounts.scopes), space-separated.', max_length=32, validators=[accounts.scopes.validate_text]),
        ),
    ]

# Rooms gain a description; the user stream gains the kinds joined and left (chat/rooms.py).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0010_search'),
    ]

    operations = [
        migrations.AddField(
            model_name='room',
            name='description',
            field=models.CharField(blank=True, db_default='', default='', max_length=500),
        ),
        migrations.AlterField(
            model_name='userevent',
            name='kind',
            field=models.CharField(choices=[('mention', 'mention'), ('dm', 'direct message'), ('invite', 'invitation'), ('unread', 'unread'), ('joined', 'joined'), ('left', 'left')], max_length=8),
        ),
    ]
